"""The bulk import's rate against a plain loop of single enqueues, in one run on this machine.

    python -m bench.importer                       # writes bench/results/import.md
    python -m bench.importer --lines 50000 --repeats 1   # a quick look

A private redis-server (``LocalRedis``); the same nightly-sync style input for every contender
(one line per user, five properties set); each contender runs ``--repeats`` times, alternating,
and the medians are compared, because the machine is shared and noisy.

- ``Importer.run`` (what ``identify-queue import`` calls) over JSON Lines, gzip'd JSON Lines, CSV
  with two typed columns, and JSON Lines with ``--skip-unchanged`` on a first night (every record
  new) and on the next (nothing changed);
- the baseline: the same lines read and parsed the same way, then ``IdentifyProducer.identify(record)``
  once per line: one Redis round trip each.  It runs on fewer lines (``--baseline-lines``); rates
  are compared, not times.

It also measures what ``--skip-unchanged`` costs Redis: ``used_memory`` before and after deleting
the fingerprints of ``--lines`` users, per user.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.report import publish
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.importer.run import Importer, ImportOptions
from producers.producer import IdentifyProducer
from worker.devtools.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parent.parent
PLANS = ("free", "pro", "enterprise")
CITIES = ("Berlin", "Lisbon", "Austin", "Osaka", "Nairobi")


def row(i: int) -> dict[str, Any]:
    return {"user_id": f"sync-user-{i:08d}", "email": f"user{i}@example.com", "plan": PLANS[i % 3],
            "city": CITIES[i % 5], "seats": i % 50, "vip": i % 7 == 0}  # fmt: skip


def write_inputs(directory: Path, lines: int) -> dict[str, Path]:
    """The same users as JSON Lines (plain and gzip) and as CSV, written a block at a time."""
    paths = {"jsonl": directory / "users.jsonl", "gz": directory / "users.jsonl.gz", "csv": directory / "users.csv"}
    with open(paths["jsonl"], "wb") as jl, gzip.open(paths["gz"], "wb", compresslevel=6) as gz, \
            open(paths["csv"], "w", newline="") as cf:  # fmt: skip
        table = csv.writer(cf)
        table.writerow(["user_id", "email", "plan", "city", "seats", "vip"])
        for start in range(0, lines, 10_000):
            block = [row(i) for i in range(start, min(lines, start + 10_000))]
            data = b"".join(orjson.dumps({"user_id": b["user_id"], "user_properties": {"$set": {
                k: v for k, v in b.items() if k != "user_id"}}}) + b"\n" for b in block)  # fmt: skip
            jl.write(data)
            gz.write(data)
            table.writerows([[b["user_id"], b["email"], b["plan"], b["city"], b["seats"], str(b["vip"]).lower()]
                             for b in block])  # fmt: skip
    return paths


def head(path: Path, lines: int, directory: Path) -> Path:
    """The first ``lines`` lines (plus the header for CSV) of a plain file, for the baseline."""
    out = directory / f"head-{lines}{path.suffix}"
    with open(path, "rb") as src, open(out, "wb") as dst:
        for n, line in enumerate(src):
            if n >= lines + (path.suffix == ".csv"):
                break
            dst.write(line)
    return out


def baseline(producer: IdentifyProducer, path: Path) -> int:
    """The plain loop: read, parse, ``identify(record)`` per line (a round trip each)."""
    count = 0
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                props = {"email": r["email"], "plan": r["plan"], "city": r["city"], "seats": int(r["seats"]),
                         "vip": r["vip"] == "true"}  # fmt: skip
                producer.identify(user_id=r["user_id"], user_properties={"$set": props})
                count += 1
        return count
    with open(path, "rb") as f:
        for line in f:
            producer.identify(orjson.loads(line))
            count += 1
    return count


def clear(client: redis.Redis, namespace: str) -> None:
    for key in client.scan_iter(match=f"{namespace}:*", count=5000):
        client.unlink(key)


def fresh_config(redis_url: str) -> QueueConfig:
    """A namespace of its own, as short as the default ``identify``, so keys weigh what they will in use."""
    return QueueConfig(redis_url=redis_url, namespace=f"b{time.monotonic_ns() % 10**7:07d}")


def timed(redis_url: str, work: Callable[[IdentifyProducer], int]) -> tuple[int, float]:
    """Lines handled and seconds taken by ``work`` against a fresh namespace (cleared afterwards)."""
    config = fresh_config(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        with IdentifyProducer(config) as producer:
            started = time.perf_counter()
            lines = work(producer)
            return lines, time.perf_counter() - started
    finally:
        clear(client, config.namespace)
        client.close()


def importing(path: Path, **options: Any) -> Callable[[IdentifyProducer], int]:
    def work(producer: IdentifyProducer) -> int:
        return Importer(producer, ImportOptions(**options)).run(str(path)).lines

    return work


def time_second_night(redis_url: str, path: Path) -> tuple[int, float]:
    """--skip-unchanged when nothing changed: a first run stores the fingerprints, the second is timed."""
    config = fresh_config(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        with IdentifyProducer(config) as producer:
            Importer(producer, ImportOptions(skip_unchanged=True)).run(str(path))
            started = time.perf_counter()
            report = Importer(producer, ImportOptions(skip_unchanged=True, restart=True)).run(str(path))
            elapsed = time.perf_counter() - started
            assert report.enqueued == 0 and report.skipped == report.lines, report
            return report.lines, elapsed
    finally:
        clear(client, config.namespace)
        client.close()


def fingerprint_bytes_per_user(redis_url: str, path: Path, users: int) -> tuple[float, int]:
    """used_memory freed by deleting the fingerprints an import of ``users`` users stored, and a key's length."""
    config = fresh_config(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        with IdentifyProducer(config) as producer:
            Importer(producer, ImportOptions(skip_unchanged=True)).run(str(path))
        keys = Keys(config.namespace)
        every_shard = keys.shard(0).fingerprint("*").replace("{s0}", "*")
        fingerprints = list(client.scan_iter(match=every_shard, count=5000))
        assert len(fingerprints) == users, len(fingerprints)
        before = int(client.info("memory")["used_memory"])
        for start in range(0, len(fingerprints), 5000):
            client.unlink(*fingerprints[start : start + 5000])
        after = int(client.info("memory")["used_memory"])
        return (before - after) / users, len(fingerprints[0])
    finally:
        clear(client, config.namespace)
        client.close()


def run_bench(lines: int = 200_000, baseline_lines: int = 20_000, repeats: int = 3) -> str:
    """Run everything and return the markdown table (the lead's bench.run calls this)."""
    directory = Path(tempfile.mkdtemp(prefix="identify-queue-bench-import-"))
    paths = write_inputs(directory, lines)
    small = {"jsonl": head(paths["jsonl"], baseline_lines, directory), "csv": head(paths["csv"], baseline_lines,
                                                                                 directory)}  # fmt: skip
    csv_options = ImportOptions.from_cli(str(paths["csv"]), types=("seats=int", "vip=bool"))
    contenders: dict[str, Callable[[str], tuple[int, float]]] = {
        "import: JSON Lines": lambda url: timed(url, importing(paths["jsonl"])),
        "import: JSON Lines, gzip": lambda url: timed(url, importing(paths["gz"])),
        "import: CSV, 2 typed columns": lambda url: timed(
            url, lambda p: Importer(p, csv_options).run(str(paths["csv"])).lines
        ),
        "import: JSON Lines, --skip-unchanged, first night": lambda url: timed(
            url, importing(paths["jsonl"], skip_unchanged=True)
        ),
        "import: JSON Lines, --skip-unchanged, nothing changed": lambda url: time_second_night(url, paths["jsonl"]),
        "baseline: identify() per line, JSON Lines": lambda url: timed(url, lambda p: baseline(p, small["jsonl"])),
        "baseline: identify() per line, CSV": lambda url: timed(url, lambda p: baseline(p, small["csv"])),
    }
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name in contenders}
    with LocalRedis() as local:
        for repeat in range(repeats):
            print(f"repeat {repeat + 1}/{repeats}", file=sys.stderr)
            for name, contender in contenders.items():
                count, seconds = contender(local.url)
                runs[name].append((count, seconds))
                print(f"  {name:<55} {count:>9,} lines {count / seconds:>10,.0f}/s", file=sys.stderr)
        fp_bytes, key_length = fingerprint_bytes_per_user(local.url, paths["jsonl"], lines)
    for path in [*paths.values(), *small.values()]:
        path.unlink()
    directory.rmdir()
    return render(runs, repeats, fp_bytes, key_length, lines)


def render(runs: dict[str, list[tuple[int, float]]], repeats: int, fp_bytes: float, key_length: int,
           lines: int) -> str:  # fmt: skip
    rates = {name: statistics.median(count / seconds for count, seconds in r) for name, r in runs.items()}
    base = {"JSON Lines": rates["baseline: identify() per line, JSON Lines"],
            "CSV": rates["baseline: identify() per line, CSV"]}  # fmt: skip
    out = [
        f"Command: `python -m bench.importer` ({repeats} runs each, medians; {os.cpu_count()} CPUs; private "
        "redis-server; one line per user, five properties)",
        "",
        "| contender | lines | lines/s | vs identify() per line |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        against = base["CSV" if "CSV" in name else "JSON Lines"]
        ratio = "" if name.startswith("baseline") else f"{rate / against:.1f}x"
        out.append(f"| {name} | {runs[name][0][0]:,} | {rate:,.0f} | {ratio} |")
    out += ["", f"Redis memory of `--skip-unchanged` fingerprints: {fp_bytes:.0f} bytes per user with a "
            f"{key_length}-byte key such as `identify:fp:u:sync-user-00000001` (`used_memory` freed by deleting "
            f"those of {lines:,} users): ~{fp_bytes * 1e6 / 2**20:.0f} MB per million users."]  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--baseline-lines", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "import.md")
    args = parser.parse_args(argv)
    text = run_bench(args.lines, args.baseline_lines, args.repeats)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
