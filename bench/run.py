"""The benchmark: identify-queue against three baselines, side by side in one run: two Celery ones
(bench/baselines.py) and a pipeline with no duties at all (bench/reference.py), the ceiling.

    python -m bench.run                      # what `make bench` runs
    python -m bench.run --records 20000 --repeats 1   # a quick look

Everything runs on this machine in the same run: a private redis-server, the local
Amplitude-compatible server (one process, reset between runs), and for each contender a worker
of the same number of processes.  Each contender runs ``--repeats`` times, alternating, and the
medians are reported with their ratios, because the machine is shared and noisy.

Measured per run:
- end-to-end records per second: from the first record handed to the producer to the last one
  accepted by the server, producer and workers running together;
- worker CPU microseconds per record: user + system time of the worker's processes (from /proc)
  over the run, divided by the records.

Both baselines' producers validate records with the same function as ours, so the comparison is
of what happens after validation: enqueueing, draining, encoding and sending.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.report import publish
from producers.contract.connection import connect
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from producers.record import validate
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess, WorkerProcess, cpu_seconds
from worker.status import gather

API_KEY = "bench-key"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    name: str
    records: int
    seconds: float
    worker_cpu_s: float
    redis_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us_per_record(self) -> float:
        return self.worker_cpu_s / self.records * 1e6

    @property
    def redis_us_per_record(self) -> float:
        return self.redis_cpu_s / self.records * 1e6


def redis_cpu_seconds(clients: list[redis.Redis]) -> float:
    """User + system CPU of redis-server processes so far, as each reports it (INFO cpu)."""
    total = 0.0
    for client in clients:
        info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def make_records(count: int, users: int) -> list[dict[str, Any]]:
    """Event-driven style updates, each user's interleaved with the others', about 170 bytes each."""
    cities = ("Berlin", "Lisbon", "Austin", "Osaka", "Nairobi")
    return [
        {
            "user_id": f"bench-user-{i % users:06d}",
            "user_properties": {
                "$set": {"seq": i // users, "plan": "pro" if i % 3 else "free", "city": cities[i % 5]},
                "$add": {"sessions": 1},
            },
            "platform": "Web",
        }
        for i in range(count)
    ]


def wait_accepted(server: LocalAmplitudeProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.stats()["accepted"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {server.stats()['accepted']} of {count} records arrived in {timeout} s")
        time.sleep(0.01)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_ours(redis_url: str, server: LocalAmplitudeProcess, records: list[dict[str, Any]], *, workers: int,
             logs: Path, extra_env: dict[str, str] | None = None, name: str = "identify-queue",
             delay_ms: int = 0, redis_nodes: list[redis.Redis] | None = None) -> Run:  # fmt: skip
    """One run of our worker; ``redis_url`` may be a Redis Cluster (then IDENTIFY_BROKER_URL goes in
    ``extra_env``).  ``redis_nodes``: the servers whose CPU is counted (none: not measured)."""
    server.reset()
    if delay_ms:
        server.control(delay_ms=delay_ms)
    config = QueueConfig(redis_url=redis_url, namespace=f"bench-{time.monotonic_ns()}")
    env = {"REDIS_URL": redis_url, "IDENTIFY_NAMESPACE": config.namespace, "AMPLITUDE_API_KEY": API_KEY,
           "AMPLITUDE_IDENTIFY_URL": server.identify_url, "IDENTIFY_LOG_LEVEL": "warning",
           **(extra_env or {})}  # fmt: skip
    worker = WorkerProcess(env, name=f"bench-{time.monotonic_ns()}", concurrency=workers,
                           log_path=logs / "ours.log").start()  # fmt: skip
    client = connect(redis_url)
    keys = Keys(config.namespace)
    try:
        wait_for(lambda: client.zcard(keys.workers) > 0, 60, "our worker")
        cpu0, redis0 = cpu_seconds(worker.pid), redis_cpu_seconds(redis_nodes or [])
        started = time.perf_counter()
        with IdentifyProducer(config) as producer:
            producer.identify_many(records)
            # Wait for the queue, not the server: with merging, the server gets fewer identifications.
            wait_for(lambda: producer.queued() == 0, 600, "our queue to drain")
        elapsed = time.perf_counter() - started
        delivered = gather(client, keys, config.shards)["delivered"]
        if delivered != len(records):
            raise RuntimeError(f"{delivered} of {len(records)} records delivered")
        cpu, redis_cpu = cpu_seconds(worker.pid) - cpu0, redis_cpu_seconds(redis_nodes or []) - redis0
    finally:
        worker.stop()
        client.close()
    return Run(name, len(records), elapsed, cpu, redis_cpu)


class BaselineWorker:
    def __init__(self, redis_url: str, server: LocalAmplitudeProcess, workers: int, log: Path) -> None:
        env = {**os.environ, "BENCH_REDIS_URL": redis_url, "BENCH_IDENTIFY_URL": server.identify_url,
               "BENCH_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}  # fmt: skip
        self.log = log
        log.write_text("")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench.baselines", "worker", "-c", str(workers), "-P", "prefork",
                 "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: "ready." in log.read_text(errors="replace"), 60, "the baseline worker")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)


def run_baseline(kind: str, redis_url: str, server: LocalAmplitudeProcess, records: list[dict[str, Any]], *,
                 workers: int, logs: Path) -> Run:  # fmt: skip
    from bench import baselines  # configured from BENCH_* set in main()

    server.reset()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    worker = BaselineWorker(redis_url, server, workers, logs / f"baseline-{kind}.log")
    try:
        cpu0 = cpu_seconds(worker.process.pid)
        started = time.perf_counter()
        if kind == "a":
            for record in records:
                baselines.post_one.delay(validate(record).data.decode())
        else:
            for start in range(0, len(records), 1000):
                chunk = [validate(r).data for r in records[start : start + 1000]]
                client.rpush(baselines.LIST_KEY, *chunk)
                baselines.post_batch.delay()
        wait_accepted(server, len(records), 900)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(worker.process.pid) - cpu0
    finally:
        worker.stop()
        client.close()
    return Run(f"baseline ({kind})", len(records), elapsed, cpu)


def run_reference(redis_url: str, server: LocalAmplitudeProcess, records: list[dict[str, Any]], *, workers: int,
                  logs: Path) -> Run:  # fmt: skip
    """Baseline (c), bench/reference.py: ``workers`` plain processes with none of our duties."""
    server.reset()
    client = redis.Redis.from_url(redis_url)
    key = f"reference-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(logs / "reference.log", "ab") as out:
        processes = [subprocess.Popen([sys.executable, "-m", "bench.reference", redis_url, key, server.identify_url,
                                       API_KEY], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
                     for _ in range(workers)]  # fmt: skip
    try:
        wait_for(lambda: int(client.get(f"{key}:ready") or 0) == workers, 60, "the reference processes")
        cpu0 = sum(cpu_seconds(p.pid) for p in processes)
        started = time.perf_counter()
        for start in range(0, len(records), 1000):
            client.rpush(key, *[orjson.dumps(r) for r in records[start : start + 1000]])
            client.rpush(f"{key}:more", 1)
        wait_accepted(server, len(records), 900)
        elapsed = time.perf_counter() - started
        cpu = sum(cpu_seconds(p.pid) for p in processes) - cpu0
    finally:
        client.set(f"{key}:stop", 1)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        client.delete(key, f"{key}:more", f"{key}:stop", f"{key}:ready")
        client.close()
    return Run("baseline (c)", len(records), elapsed, cpu)


def median_run(runs: list[Run]) -> dict[str, float]:
    return {
        "records": runs[0].records,
        "rate": statistics.median(r.rate for r in runs),
        "cpu_us_per_record": statistics.median(r.cpu_us_per_record for r in runs),
        "runs": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument(
        "--baseline-a-records",
        type=int,
        default=3_000,
        help="baseline (a) sends one request per record: run it on fewer and compare rates",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, the same for every contender")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput.md")
    args = parser.parse_args(argv)  # fmt: skip

    records = make_records(args.records, args.users)
    logs = Path(tempfile.mkdtemp(prefix="identify-queue-bench-"))
    results: dict[str, list[Run]] = {"ours": [], "ours_no_budget": [], "a": [], "b": [], "c": []}
    with LocalRedis() as local_redis:
        os.environ["BENCH_REDIS_URL"] = local_redis.url
        server = LocalAmplitudeProcess(api_key=API_KEY, log_path=logs / "server.log").start()
        os.environ["BENCH_IDENTIFY_URL"] = server.identify_url
        os.environ["BENCH_API_KEY"] = API_KEY
        try:
            for repeat in range(args.repeats):
                print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr)
                for kind in ("ours", "ours_no_budget", "c", "b", "a"):
                    if kind == "ours":
                        run = run_ours(local_redis.url, server, records, workers=args.workers, logs=logs)
                    elif kind == "c":
                        run = run_reference(local_redis.url, server, records, workers=args.workers, logs=logs)
                    elif kind == "ours_no_budget":
                        run = run_ours(local_redis.url, server, records, workers=args.workers, logs=logs,
                                       extra_env={"IDENTIFY_USER_UPDATES_PER_HOUR": "0"},
                                       name="identify-queue, budget guard off")  # fmt: skip
                    else:
                        subset = records[: args.baseline_a_records] if kind == "a" else records
                        run = run_baseline(kind, local_redis.url, server, subset, workers=args.workers, logs=logs)
                    results[kind].append(run)
                    print(f"  {run.name:<16} {run.records:>8,} records  {run.rate:>10,.0f}/s  "
                          f"{run.cpu_us_per_record:>8.1f} us CPU/record", file=sys.stderr)  # fmt: skip
        finally:
            server.stop()

    summary = {kind: median_run(runs) for kind, runs in results.items()}
    ours, bare, a, b, c = summary["ours"], summary["ours_no_budget"], summary["a"], summary["b"], summary["c"]
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({args.repeats} runs each, medians; {args.workers} worker processes; "
        f"{os.cpu_count()} CPUs)",
        "",
        "| contender | records | end-to-end records/s | worker CPU us/record | identify-queue is |",
        "|---|---:|---:|---:|---|",
        f"| identify-queue (durable, ordered; defaults: hourly budget guard on) | {ours['records']:,} | "
        f"{ours['rate']:,.0f} | {ours['cpu_us_per_record']:.1f} | {ours['rate'] / c['rate']:.2f}x baseline (c) |",
        f"| identify-queue with IDENTIFY_USER_UPDATES_PER_HOUR=0 (no budget guard) | {bare['records']:,} | "
        f"{bare['rate']:,.0f} | {bare['cpu_us_per_record']:.1f} | {bare['rate'] / c['rate']:.2f}x baseline (c), "
        f"{bare['rate'] / a['rate']:.0f}x baseline (a), {bare['rate'] / b['rate']:.2f}x baseline (b) |",
        f"| baseline (c): no duties (pop 1,000 raw records, join, POST; bench/reference.py) | {c['records']:,} | "
        f"{c['rate']:,.0f} | {c['cpu_us_per_record']:.1f} | the ceiling: what the guarantees cost is the gap |",
        f"| baseline (b): Celery task per batch | {b['records']:,} | {b['rate']:,.0f} | "
        f"{b['cpu_us_per_record']:.1f} | {ours['rate'] / b['rate']:.2f}x as fast, "
        f"{b['cpu_us_per_record'] / ours['cpu_us_per_record']:.2f}x less CPU |",
        f"| baseline (a): Celery task per record | {a['records']:,} | {a['rate']:,.0f} | "
        f"{a['cpu_us_per_record']:.1f} | {ours['rate'] / a['rate']:.0f}x as fast, "
        f"{a['cpu_us_per_record'] / ours['cpu_us_per_record']:.0f}x less CPU |",
    ]
    text = "\n".join(lines)
    publish(text, args.out)
    raw = {k: [asdict(r) | {"rate": r.rate, "cpu_us_per_record": r.cpu_us_per_record} for r in v]
           for k, v in results.items()}  # fmt: skip
    args.out.with_suffix(".json").write_bytes(
        orjson.dumps({"summary": summary, "runs": raw}, option=orjson.OPT_INDENT_2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
