"""Operators' view: Prometheus metrics scraped over HTTP, and JSON logs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import StartWorker, drained, seq_records, wait_until, worker_env
from worker.devtools.local_redis import free_port
from worker.devtools.local_stack import LocalAmplitudeProcess


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.shards(2)
def test_metrics_scraped_over_http_show_the_right_counts(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    # Given a run with deliveries, one user's 3 records refused, one throttled user and one 500
    amplitude.control(reject_users=["user-00004"], throttle_users={"user-00006": 3.0}, statuses=[200, 500])
    producer.identify_many(seq_records(30, 3))
    port = free_port()
    start_worker(IDENTIFY_METRICS_PORT=str(port), IDENTIFY_THROTTLE_PAUSE_S="0.5",
                 IDENTIFY_RETRY_BACKOFF_BASE_S="0.1", IDENTIFY_BATCH_SIZE="20")  # fmt: skip
    wait_until(lambda: drained(queue_config), 30, "delivery")
    # When Prometheus scrapes the worker (a process counts a delivery just after settling it)
    m = wait_until(
        lambda: (s := scrape(port)).get("identify_queue_records_delivered_total") == 87 and s, 10, "the counts"
    )
    # Then the counts are those of the run
    assert m["identify_queue_records_dead_lettered_total{reason=invalid}"] == 3
    assert m["identify_queue_records_held_total{reason=held}"] >= 3
    assert m["identify_queue_requests_total{status=500}"] == 1
    assert m["identify_queue_requests_total{status=429}"] >= 1
    requests_sent = sum(v for k, v in m.items() if k.startswith("identify_queue_requests_total"))
    assert m["identify_queue_batch_records_count"] == requests_sent
    assert m["identify_queue_request_seconds_count"] == requests_sent
    assert m["identify_queue_records_enqueued_total"] == 90
    assert (m["identify_queue_queued"], m["identify_queue_in_flight"], m["identify_queue_held"]) == (0, 0, 0)
    assert m["identify_queue_dead_letter{reason=invalid}"] == 3
    assert m["identify_queue_blocked"] == 0


def test_json_logs_are_one_object_per_line(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, worker_logs: Callable[[], str],
) -> None:  # fmt: skip
    amplitude.control(statuses=[503])
    producer.identify_many(seq_records(5, 1))
    worker = start_worker(IDENTIFY_LOG_FORMAT="json")
    wait_until(lambda: drained(queue_config), 30, "delivery")
    worker.terminate()
    lines = [line for line in worker_logs().splitlines() if line.strip()]
    # Celery prints one plain line of its own when it shuts down; everything else is JSON
    docs = [orjson.loads(line) for line in lines if not line.startswith("worker: Warm shutdown")]
    assert len(docs) == len(lines) - 1
    assert {"time", "level", "logger", "message", "process"} <= set(docs[0])
    assert any(d["level"] == "WARNING" and "HTTP 503" in d["message"] for d in docs)


def test_flower_sees_the_workers(
    queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker(concurrency=1)
    # Flower reads the same app, from the same environment, and follows workers run with --events
    env = {**os.environ, **worker_env(queue_config, amplitude.identify_url), "FLOWER_UNAUTHENTICATED_API": "true"}
    port = free_port()
    with open(tmp_path / "flower.log", "wb") as out:
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def workers() -> dict[str, object]:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/workers", params={"refresh": 1}, timeout=10)
            except requests.ConnectionError:
                return {}
            return answer.json() if answer.ok else {}

        seen = wait_until(workers, 60, "Flower to list the worker")
        assert any(name.startswith(worker.name) for name in seen)
    finally:
        flower.terminate()
        flower.wait(30)
