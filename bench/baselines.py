"""The two baselines of the benchmark, as a team would write them with Celery and requests.

(a) one Celery task per record, each posting one identification;
(b) one plain Celery task per batch: pop up to 1,000 records from a Redis list and
    ``requests.post(data={...})`` them; no durability (popped records die with the process), no
    per-user order (batches of one list run concurrently).

Run as ``celery -A bench.baselines worker``; settings come from BENCH_* environment variables.
"""

from __future__ import annotations

import os

import redis
import requests
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
IDENTIFY_URL = os.environ.get("BENCH_IDENTIFY_URL", "http://127.0.0.1:8089/identify")
API_KEY = os.environ.get("BENCH_API_KEY", "bench-key")
LIST_KEY = os.environ.get("BENCH_LIST_KEY", "bench:records")

app = Celery("baselines", broker=REDIS_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=False,
)
_session = requests.Session()
_redis = redis.Redis.from_url(REDIS_URL)


@app.task(name="bench.post_one")
def post_one(identification: str) -> None:
    """Baseline (a): one record, one task, one request."""
    _session.post(IDENTIFY_URL, data={"api_key": API_KEY, "identification": identification}, timeout=30)


@app.task(name="bench.post_batch")
def post_batch() -> None:
    """Baseline (b): pop up to 1,000 records and send them as one request."""
    records = _redis.lpop(LIST_KEY, 1000)
    if records:
        body = "[" + ",".join(r.decode() for r in records) + "]"
        _session.post(IDENTIFY_URL, data={"api_key": API_KEY, "identification": body}, timeout=30)
