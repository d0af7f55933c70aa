"""Benchmarks for merging and for scaling out, in one run.

    python -m bench.throttling            # writes bench/results/throttling.md

1. Merging: an event-driven mix (200,000 updates of 20,000 users, Zipf-skewed so that hot users get
   many updates: last_seen, counters, page lists, plan changes, device fields) delivered with
   IDENTIFY_COALESCE on and off: identifications sent per input record, and records per second.
2. Scaling out: records and requests per second with 1, 2 and 4 worker processes on one Redis,
   (a) against the local server as it is (CPU-bound on this machine: everything shares its cores),
   (b) with 50 ms added to every answer, as a round trip to Amplitude adds, (c) the same under a
   global limit of 30 requests per second.
(The hourly budget's memory per user is measured by bench/memory.py.)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.report import publish
from bench.run import API_KEY, ROOT, make_records, run_ours
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess


def event_mix(count: int, users: int, seed: int = 7) -> list[dict[str, Any]]:
    """What event-driven services send: a few hot users updated constantly, a long tail rarely."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.1 for i in range(users)]
    picks = rng.choices(range(users), cum_weights=list(_accumulate(weights)), k=count)
    out: list[dict[str, Any]] = []
    for n, u in enumerate(picks):
        record: dict[str, Any] = {"user_id": f"mix-user-{u:06d}"}
        kind = rng.random()
        if kind < 0.6:
            record["user_properties"] = {"$set": {"last_seen": f"2026-11-28T{n // 3600 % 24:02d}:{n // 60 % 60:02d}"},
                                         "$add": {"events": 1}}  # fmt: skip
        elif kind < 0.8:
            record["user_properties"] = {"$add": {"page_views": 1}}
        elif kind < 0.9:
            record["user_properties"] = {"plan": rng.choice(["free", "pro", "team"])}
        elif kind < 0.95:
            record["user_properties"] = {"$append": {"visited": f"/page/{rng.randrange(50)}"}}
        else:
            record.update(platform="iOS", os_name="ios", os_version=rng.choice(["17.1", "17.2"]))
            record["user_properties"] = {"$set": {"app_build": rng.randrange(100)}}
        out.append(record)
    return out


def _accumulate(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def merging(redis_url: str, server: LocalAmplitudeProcess, logs: Path, repeats: int) -> list[str]:
    records = event_mix(200_000, 20_000)
    rows = []
    # The hourly budget is off here: without merging, the hottest user's 29,219 updates would wait
    # hours behind it (that is the guard working); this measures what merging saves.
    for label, flag in (("merging off", "0"), ("merging on", "1")):
        rates, sent = [], []
        for _ in range(repeats):
            env = {"IDENTIFY_COALESCE": flag, "IDENTIFY_USER_UPDATES_PER_HOUR": "0"}
            run = run_ours(redis_url, server, records, workers=2, logs=logs, extra_env=env)
            rates.append(run.rate)
            sent.append(server.stats()["accepted"])
        identifications = statistics.median(sent)
        rows.append(f"| {label} | {len(records):,} | {identifications:,.0f} | "
                    f"{identifications / len(records):.3f} | {statistics.median(rates):,.0f} |")  # fmt: skip
        print(f"  {label}: {identifications / len(records):.3f} identifications per record", file=sys.stderr)
    hottest = max(Counter(r["user_id"] for r in records).values())
    return [
        f"The hottest user of the mix has {hottest:,} updates (Amplitude keeps at most 1,800 an hour).",
        "",
        "| event-driven mix | records | identifications sent | per record | records/s |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def scaling(redis_url: str, server: LocalAmplitudeProcess, logs: Path, repeats: int) -> list[str]:
    records = make_records(100_000, 10_000)
    rows = []
    cases: list[tuple[str, int, dict[str, str]]] = [
        ("local server as is", 0, {}),
        ("50 ms per answer", 50, {}),
        ("50 ms per answer, limit 30 requests/s", 50, {"IDENTIFY_RATE_LIMIT_RPS": "30"}),
    ]
    for label, delay, env in cases:
        cells = []
        for workers in (1, 2, 4):
            rates, rps = [], []
            for _ in range(repeats):
                server.reset()
                run = run_ours(redis_url, server, records, workers=workers, logs=logs, extra_env=env,
                               delay_ms=delay)  # fmt: skip
                requests = server.stats()["requests"]
                rates.append(run.rate)
                rps.append(requests / run.seconds)
            cells.append(f"{statistics.median(rates):,.0f} rec/s, {statistics.median(rps):,.1f} req/s")
            print(f"  {label}, {workers} worker processes: {cells[-1]}", file=sys.stderr)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return [
        "| 100,000 records, 10,000 users | 1 worker process | 2 worker processes | 4 worker processes |",
        "|---|---:|---:|---:|",
        *rows,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throttling.md")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="identify-queue-bench-"))
    with LocalRedis() as local_redis:
        server = LocalAmplitudeProcess(api_key=API_KEY, log_path=logs / "server.log").start()
        try:
            print("merging", file=sys.stderr)
            merge_rows = merging(local_redis.url, server, logs, args.repeats)
            print("scaling", file=sys.stderr)
            scale_rows = scaling(local_redis.url, server, logs, args.repeats)
        finally:
            server.stop()
    command = "python -m bench.throttling " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"Command: `{command.strip()}` (medians of {args.repeats} runs; 2 CPUs)", "",
        *merge_rows, "", *scale_rows,
    ])  # fmt: skip
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
