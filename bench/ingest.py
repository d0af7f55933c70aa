"""Benchmark of the HTTP ingest endpoint against its HTTP floor, side by side in one run.

    python -m bench.ingest                    # writes bench/results/ingest.md
    python -m bench.ingest --requests 500 --repeats 1   # a quick look

Two servers on the same stack (waitress, the same threads and limits), each its own process:

- ``identify-queue serve``: parse, authenticate, validate every record, enqueue the request's
  records in Redis in one script, answer once Redis has them;
- the floor (``bench/ingest_floor.py``): the same parsing and authentication, then 200 at once.

Client processes (``--clients``, 4 by default, each with one keep-alive connection, raw
``http.client`` so the client costs little of the machine's CPU) post the same pre-encoded
form bodies of ``--per-request`` identifications (100 by default, about 170 bytes each, as
``bench/run.py`` makes them, 20 different users' bodies in turn) as Amplitude clients send them.
Each contender runs ``--repeats`` times, alternating; medians are reported.  No worker drains the
queue, and Redis is flushed between runs, so the queue does not grow across runs.

Measured per run: requests per second from the first request to the last answer (every answer must
be 200), and the server's CPU time per request (user + system, from /proc).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import redis

from bench.report import publish
from bench.run import make_records
from producers.contract.keys import Keys
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-" + secrets.token_urlsafe(18)
FLOOR_COMMAND = [sys.executable, "-m", "bench.ingest_floor"]
WARMUP = 20
DISTINCT_BODIES = 20


@dataclass
class Run:
    name: str
    requests: int
    records: int
    seconds: float
    server_cpu_s: float
    redis_cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e3

    @property
    def redis_us_per_record(self) -> float:
        return self.redis_cpu_s / self.records * 1e6


def make_bodies(per_request: int) -> list[bytes]:
    """Form bodies as an Amplitude client sends them, each with other users' records."""
    records = make_records(per_request * DISTINCT_BODIES, users=per_request * DISTINCT_BODIES // 2)
    return [
        urlencode({"api_key": TOKEN,
                   "identification": orjson.dumps(records[i * per_request : (i + 1) * per_request]).decode()}).encode()
        for i in range(DISTINCT_BODIES)
    ]  # fmt: skip


def _client(url: str, bodies: list[bytes], count: int, barrier: Barrier, results: Any) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    failures = 0

    def post(i: int) -> None:
        nonlocal failures
        conn.request("POST", "/identify", body=bodies[i % len(bodies)], headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            failures += 1

    for i in range(WARMUP):
        post(i)
    barrier.wait()
    started = time.perf_counter()
    for i in range(count):
        post(i)
    results.put((started, time.perf_counter(), failures))
    conn.close()


def measure(name: str, server: IngestProcess, redis_pid: int, bodies: list[bytes], per_request: int, *,
            clients: int, requests: int) -> Run:  # fmt: skip
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    per_client = requests // clients
    procs = [
        ctx.Process(target=_client, args=(server.url, bodies, per_client, barrier, results)) for _ in range(clients)
    ]
    for p in procs:
        p.start()
    barrier.wait(120)
    cpu0, redis0 = cpu_seconds(server.pid), cpu_seconds(redis_pid)
    outcomes = [results.get(timeout=600) for _ in procs]
    cpu, redis_cpu = cpu_seconds(server.pid) - cpu0, cpu_seconds(redis_pid) - redis0
    for p in procs:
        p.join(30)
    failures = sum(o[2] for o in outcomes)
    if failures:
        raise RuntimeError(f"{name}: {failures} requests were not answered 200; see {server.log_path}")
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    done = per_client * clients
    return Run(name, done, done * per_request, seconds, cpu, redis_cpu)


def bench_ingest(*, requests: int = 4000, clients: int = 4, threads: int = 4, per_request: int = 100,
                 repeats: int = 3, logs: Path | None = None) -> str:  # fmt: skip
    """Run both contenders ``repeats`` times, alternating; return the markdown table of medians."""
    logs = logs or Path(tempfile.mkdtemp(prefix="identify-queue-bench-ingest-"))
    bodies = make_bodies(per_request)
    runs: dict[str, list[Run]] = {"floor": [], "serve": []}
    with LocalRedis() as local_redis:
        assert local_redis.process is not None
        env = {"REDIS_URL": local_redis.url, "IDENTIFY_NAMESPACE": "bench-ingest", "IDENTIFY_INGEST_TOKEN": TOKEN,
               "IDENTIFY_INGEST_THREADS": str(threads), "IDENTIFY_LOG_LEVEL": "warning",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        servers = {
            "floor": IngestProcess(env, command=FLOOR_COMMAND, log_path=logs / "floor.log").start(),
            "serve": IngestProcess(env, log_path=logs / "serve.log").start(),
        }
        client = redis.Redis.from_url(local_redis.url)
        try:
            for repeat in range(repeats):
                for name, server in servers.items():
                    client.flushdb()
                    run = measure(name, server, local_redis.process.pid, bodies, per_request, clients=clients,
                                  requests=requests)  # fmt: skip
                    runs[name].append(run)
                    print(f"  {repeat + 1}/{repeats} {name:<6} {run.rate:>8,.0f} requests/s  "
                          f"{run.cpu_ms_per_request:.2f} ms server CPU/request", file=sys.stderr)  # fmt: skip
                    if name == "serve":
                        totals = client.scan_iter(match=Keys("bench-ingest").shard(0).total.replace("{s0}", "*"))
                        queued = sum(int(client.get(key) or 0) for key in totals)
                        assert queued == run.records + WARMUP * clients * per_request
        finally:
            for server in servers.values():
                server.stop()
            client.close()
    return _table(runs, requests=requests, clients=clients, threads=threads, per_request=per_request,
                  repeats=repeats, body_bytes=statistics.mean(len(b) for b in bodies))  # fmt: skip


def _table(runs: dict[str, list[Run]], *, requests: int, clients: int, threads: int, per_request: int, repeats: int,
           body_bytes: float) -> str:  # fmt: skip
    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs[name])

    floor, serve = med("floor", "rate"), med("serve", "rate")
    floor_cpu, serve_cpu = med("floor", "cpu_ms_per_request"), med("serve", "cpu_ms_per_request")
    lines = [
        f"Command: `python -m bench.ingest --requests {requests} --clients {clients} --threads {threads} "
        f"--per-request {per_request} --repeats {repeats}` ({repeats} runs each, medians of {requests:,} requests; "
        f"{clients} client processes with a keep-alive connection each; waitress with {threads} threads; "
        f"{per_request} identifications per form-encoded body of {body_bytes / 1000:.1f} kB; {os.cpu_count()} CPUs)",
        "",
        "| server | requests/s | identifications/s | server CPU ms/request | Redis CPU us/identification | "
        "share of the floor's rate |",
        "|---|---:|---:|---:|---:|---:|",
        f"| HTTP floor: read, parse, authenticate; no validation, no enqueue | {floor:,.0f} | "
        f"{floor * per_request:,.0f} | {floor_cpu:.2f} | - | 1.00 |",
        f"| `identify-queue serve`: + validation + durable enqueue | {serve:,.0f} | {serve * per_request:,.0f} | "
        f"{serve_cpu:.2f} | {med('serve', 'redis_us_per_record'):.2f} | {serve / floor:.2f} |",
        "",
        f"Validation and the durable enqueue cost {serve_cpu - floor_cpu:.2f} ms of server CPU per request of "
        f"{per_request} ({(serve_cpu - floor_cpu) / per_request * 1e3:.1f} us per identification); the floor is "
        f"{floor / serve:.2f}x as fast.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="requests per run, split among the clients")
    parser.add_argument("--clients", type=int, default=4, help="client processes, one keep-alive connection each")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads, the same for both servers")
    parser.add_argument("--per-request", type=int, default=100, help="identifications per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.md")
    args = parser.parse_args(argv)
    text = bench_ingest(requests=args.requests, clients=args.clients, threads=args.threads,
                        per_request=args.per_request, repeats=args.repeats)  # fmt: skip
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
