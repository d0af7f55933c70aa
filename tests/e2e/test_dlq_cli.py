"""The dlq commands against dead-letter entries made by a real worker."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import StartWorker, status, wait_until
from worker.cli.main import main
from worker.cli.operate import parse_since
from worker.devtools.local_stack import LocalAmplitudeProcess


@pytest.fixture
def populated(producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
              start_worker: StartWorker) -> QueueConfig:  # fmt: skip
    """Three invalid records and two expired ones in the dead-letter queue, three delivered."""
    amplitude.control(reject_users=["user-bad-1", "user-bad-2", "user-bad-3"])
    producer.identify_many([{"user_id": f"user-bad-{i}", "user_properties": {"n": i}} for i in (1, 2, 3)])
    producer.identify_many([{"user_id": f"user-ok-{i}", "user_properties": {"n": i}} for i in (1, 2, 3)])
    worker = start_worker()
    wait_until(lambda: status(queue_config)["dead_letter"] == 3 and status(queue_config)["queued"] == 0, 30, "dlq")
    worker.terminate()
    amplitude.control(statuses=[503] * 100)
    producer.identify_many([{"user_id": f"user-old-{i}"} for i in (1, 2)])
    worker = start_worker(IDENTIFY_RETRY_MAX_ATTEMPTS="1")
    wait_until(lambda: status(queue_config)["dead_letter"] == 5, 30, "expired records")
    worker.terminate()
    amplitude.control()
    return queue_config


def run(config: QueueConfig, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace, "IDENTIFY_SHARDS": str(config.shards)}
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def test_list_export_show(populated: QueueConfig) -> None:
    table = run(populated, "dlq", "list")
    assert table.exit_code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:6] == ["id", "enqueued", "at", "failed", "at", "reason"]
    assert sorted(row.split()[3] for row in rows) == ["expired"] * 2 + ["invalid"] * 3
    assert "5 shown of 5 dead-lettered" in table.stderr
    lines = [orjson.loads(line) for line in run(populated, "dlq", "export", "--reason", "invalid").stdout.splitlines()]
    assert sorted(d["record"]["user_id"] for d in lines) == ["user-bad-1", "user-bad-2", "user-bad-3"]
    assert all(d["reason"] == "invalid" and d["status"] == 400 for d in lines)
    one = orjson.loads(run(populated, "dlq", "show", lines[0]["id"]).stdout)
    assert one == lines[0]
    assert set(one) >= {"record", "reason", "status", "response", "attempts", "first_enqueued_ms", "failed_at_ms",
                        "user_key", "seq"}  # fmt: skip
    assert run(populated, "dlq", "show", "no-such-id").exit_code == 1
    assert status(populated)["dead_letter_by_reason"] == {"invalid": 3, "expired": 2}


def test_replay_by_reason_delivers_them(populated: QueueConfig, amplitude: LocalAmplitudeProcess,
                                        start_worker: StartWorker) -> None:  # fmt: skip
    assert run(populated, "dlq", "replay").exit_code == 2  # says what to replay
    result = run(populated, "dlq", "replay", "--reason", "expired")
    assert "replayed 2 record(s)" in result.stdout
    start_worker()
    wait_until(lambda: status(populated)["accepted_not_done"] == 0, 30, "replayed delivery")
    assert {r["user_id"] for r in amplitude.accepted()} >= {"user-old-1", "user-old-2"}
    assert status(populated)["dead_letter_by_reason"] == {"invalid": 3}


def test_purge_asks_first(populated: QueueConfig) -> None:
    refused = run(populated, "dlq", "purge", "--reason", "invalid", input="n\n")
    assert refused.exit_code == 1 and status(populated)["dead_letter"] == 5
    assert "Delete 3 dead-lettered record(s) for good?" in refused.stdout
    done = run(populated, "dlq", "purge", "--reason", "invalid", "--yes")
    assert "purged 3 record(s)" in done.stdout
    assert status(populated)["dead_letter_by_reason"] == {"expired": 2}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30m", 1_000_000_000_000 - 1_800_000), ("2h", 1_000_000_000_000 - 7_200_000), ("1.5s", 1_000_000_000_000 - 1500),
     ("2001-09-09T01:46:40Z", 1_000_000_000_000), ("2001-09-09T01:46:40", 1_000_000_000_000), (None, None)],
)  # fmt: skip
def test_since_takes_times_and_ages(value: str | None, expected: int | None) -> None:
    assert parse_since(value, now_ms=1_000_000_000_000) == expected


def test_replay_with_another_shard_count_is_refused(populated: QueueConfig) -> None:
    env = {"REDIS_URL": populated.redis_url, "IDENTIFY_NAMESPACE": populated.namespace, "IDENTIFY_SHARDS": "32"}
    result = CliRunner().invoke(main, ["dlq", "replay", "--all"], env=env, catch_exceptions=False)
    assert result.exit_code == 2
    assert "IDENTIFY_SHARDS is 32" in result.stderr
    assert status(populated)["dead_letter"] == 5
