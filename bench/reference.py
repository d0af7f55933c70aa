"""Baseline (c): a pipeline with none of identify-queue's duties, the ceiling the benchmark compares to.

Plain processes, each popping up to 1,000 raw JSON records from one Redis list, joining them into a
form body with a minimal percent-encoder (the one our sink uses, worker/drain/sink.py) and POSTing
it over a keep-alive ``requests.Session``: no validation, no durability (popped records die with
the process), no order, no limits, no merging, no metrics.  Whatever identify-queue spends beyond
this is the cost of its guarantees.

    python -m bench.reference URL LIST IDENTIFY_URL API_KEY   # one drain process; bench.run starts them
"""

from __future__ import annotations

import sys

import redis
import requests

from worker.drain.sink import batch_json, form_body

BATCH = 1000


def drain(redis_url: str, key: str, identify_url: str, api_key: str) -> int:
    """Send batches until told to stop (``<key>:stop``), once the benchmark has read its CPU time."""
    client = redis.Redis.from_url(redis_url)
    session = requests.Session()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    sent = 0
    client.incr(f"{key}:ready")  # the benchmark starts its clock once every process is up
    while True:
        records = client.lpop(key, BATCH)
        if not records:
            if client.exists(f"{key}:stop"):
                return sent
            client.blpop([f"{key}:more"], timeout=0.05)  # idle until the producer pushes more
            continue
        body = form_body(api_key, batch_json(records))
        session.post(identify_url, data=body, headers=headers, timeout=30).raise_for_status()
        sent += len(records)


if __name__ == "__main__":
    drain(*sys.argv[1:5])
