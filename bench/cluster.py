"""The queue on a 3-master Redis Cluster next to one Redis: same records, same worker, same run.

    python -m bench.cluster                   # what `make bench` runs: medians of 3
    python -m bench.cluster --records 20000 --repeats 1   # a quick look

Both sides run the worker of bench.run (``--workers`` processes, the local Amplitude-compatible
server, the budget guard on) with append-only files fsynced every second.  On the cluster
(3 masters, 3 replicas, worker/devtools/local_cluster.py) Celery's broker is a standalone Redis
apart (IDENTIFY_BROKER_URL); on one Redis the broker is that Redis.  Measured per run: records per
second end to end, the worker's CPU per record, and the queue's redis-servers' CPU per record
(INFO cpu: on the cluster the masters' and, apart, the replicas').

Everything shares this machine's cores, so the cluster's figure here is not its capacity: what it
shows is the cost per record of spreading the queue (more round trips, one call per shard), and
that each master carries a third of the Redis work, which is what lets a cluster on its own
machines go past one Redis's core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import redis

from bench.report import publish
from bench.run import API_KEY, ROOT, Run, make_records, redis_cpu_seconds, run_ours
from worker.devtools.local_cluster import LocalCluster
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import LocalAmplitudeProcess

PERSISTENCE = ["--appendfsync", "everysec"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, the same on both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster.md")
    args = parser.parse_args(argv)

    records = make_records(args.records, args.users)
    logs = Path(tempfile.mkdtemp(prefix="identify-queue-bench-cluster-"))
    runs: dict[str, list[Run]] = {"one": [], "cluster": []}
    replicas_us: list[float] = []
    busiest: list[float] = []  # the busiest master's share of the masters' CPU
    with (
        LocalRedis(appendonly=True, extra=PERSISTENCE) as single,
        LocalRedis() as broker,
        LocalCluster() as cluster,
    ):
        server = LocalAmplitudeProcess(api_key=API_KEY, log_path=logs / "server.log").start()
        try:
            for repeat in range(args.repeats):
                print(f"repeat {repeat + 1}/{args.repeats}", file=sys.stderr)
                one = run_ours(single.url, server, records, workers=args.workers, logs=logs,
                               name="one Redis", redis_nodes=[single.admin()])  # fmt: skip
                masters, replicas = _roles(cluster)
                before, each = redis_cpu_seconds(replicas), [redis_cpu_seconds([m]) for m in masters]
                spread = run_ours(cluster.url, server, records, workers=args.workers, logs=logs,
                                  name="3-master cluster", redis_nodes=masters,
                                  extra_env={"IDENTIFY_BROKER_URL": broker.url})  # fmt: skip
                replicas_us.append((redis_cpu_seconds(replicas) - before) / spread.records * 1e6)
                each = [redis_cpu_seconds([m]) - b for m, b in zip(masters, each, strict=True)]
                busiest.append(max(each) / sum(each))
                for run in (one, spread):
                    runs["one" if run is one else "cluster"].append(run)
                    print(f"  {run.name:<18} {run.rate:>10,.0f}/s  worker {run.cpu_us_per_record:6.1f} us/record  "
                          f"redis {run.redis_us_per_record:5.2f} us/record", file=sys.stderr)  # fmt: skip
        finally:
            server.stop()

    def med(name: str, value: str) -> float:
        return statistics.median(getattr(r, value) for r in runs[name])

    command = "python -m bench.cluster " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` ({args.repeats} runs each, alternating, medians; {args.records:,} records of "
        f"{args.users:,} users; {args.workers} worker processes; {os.cpu_count()} CPUs shared by everything)",
        "",
        "| queue on | end-to-end records/s | worker CPU us/record | queue Redis CPU us/record | busiest server |",
        "|---|---:|---:|---:|---:|",
        f"| one Redis (also the broker) | {med('one', 'rate'):,.0f} | {med('one', 'cpu_us_per_record'):.1f} | "
        f"{med('one', 'redis_us_per_record'):.2f} | {med('one', 'redis_us_per_record'):.2f} us/record |",
        f"| Redis Cluster, 3 masters + 3 replicas (broker apart) | {med('cluster', 'rate'):,.0f} | "
        f"{med('cluster', 'cpu_us_per_record'):.1f} | {med('cluster', 'redis_us_per_record'):.2f} on the masters, "
        f"{statistics.median(replicas_us):.2f} on the replicas | "
        f"{med('cluster', 'redis_us_per_record') * statistics.median(busiest):.2f} us/record "
        f"({statistics.median(busiest):.0%} of the masters') |",
        "",
        f"The cluster ran at {med('cluster', 'rate') / med('one', 'rate'):.2f}x one Redis's rate on this machine, "
        "where its six servers share the cores with the worker and the producer: the figure to read is the "
        "busiest server's CPU per record, which bounds what one Redis core carries.",
    ]
    publish("\n".join(lines), args.out)
    return 0


def _roles(cluster: LocalCluster) -> tuple[list[redis.Redis], list[redis.Redis]]:
    """The cluster's masters and replicas now (a failover may have swapped them)."""
    masters, replicas = [], []
    for node in cluster.nodes:
        client = node.admin()
        (masters if client.info("replication")["role"] == "master" else replicas).append(client)
    return masters, replicas


if __name__ == "__main__":
    sys.exit(main())
