"""`identify-queue import` as a real process: bounded memory, kill -9 and resume, waiting on a full queue."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import orjson
import pytest
import redis

from producers.contract.entry import decode
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from tests.support import StartWorker, check_delivery, total_of, wait_until
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess

pytestmark = pytest.mark.usefixtures("clear_namespace")


def env_for(config: QueueConfig, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace,
            "IDENTIFY_SHARDS": str(config.shards), **extra}  # fmt: skip


def write_lines(path: Path, count: int, *, compress: bool = False) -> None:
    """``count`` identifications numbered by ``seq``, written in bulk (about 115 bytes a line)."""
    with gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb") as f:
        for start in range(0, count, 50_000):
            f.write(b"".join(
                b'{"user_id":"user-%07d","user_properties":{"$set":{"seq":%d,"plan":"pro","city":"Berlin"}},'
                b'"platform":"Web"}\n' % (i % 100_000, i)
                for i in range(start, min(count, start + 50_000))
            ))  # fmt: skip


def queued_seqs(client: redis.Redis, keys: Keys, shards: int) -> list[int]:
    seqs = []
    for s in range(shards):
        for raw in client.lrange(keys.shard(s).queue, 0, -1):
            seqs.append(orjson.loads(decode(raw).data)["user_properties"]["$set"]["seq"])
    return seqs


def queued_count(client: redis.Redis, keys: Keys, shards: int) -> int:
    return sum(client.llen(keys.shard(s).queue) for s in range(shards))


def start_import(config: QueueConfig, *args: str, stdin: IO[bytes] | int | None = None, log: Path,
                 **env: str) -> subprocess.Popen[bytes]:  # fmt: skip
    with open(log, "ab") as err:
        return subprocess.Popen([*COMMAND, "import", *args], env=env_for(config, **env), stdin=stdin,
                                stdout=subprocess.PIPE, stderr=err)  # fmt: skip


def finish(process: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    """Wait for the process; its exit code and stdout (the summary: one line, it cannot fill the pipe)."""
    assert process.stdout is not None
    code = process.wait(timeout)
    out = process.stdout.read().decode()
    process.stdout.close()
    return code, out


def peak_rss_kb(process: subprocess.Popen[bytes]) -> int:
    """The process's peak resident memory (VmHWM) as last seen before it exits.

    Read from /proc while it runs: VmHWM counts only the program itself, from its exec on.  (The
    ru_maxrss wait4() reports for a child also counts the pytest process it was forked from.)
    """
    status = Path(f"/proc/{process.pid}/status")
    peak = 0
    while process.poll() is None:
        try:
            text = status.read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.05)  # sampling a measurement, not waiting for anything
    return peak


@pytest.mark.timeout(300)
def test_a_million_lines_import_in_bounded_memory(tmp_path: Path, queue_config: QueueConfig, keys: Keys,
                                                  redis_client: redis.Redis) -> None:  # fmt: skip
    lines = 1_000_000
    path = tmp_path / "users.jsonl.gz"
    write_lines(path, lines, compress=True)
    uncompressed = 1_000_000 * 115  # near enough: what holding the file would cost at the very least
    process = start_import(queue_config, str(path), "--progress", "none", log=tmp_path / "import.log")
    peak_mb = peak_rss_kb(process) / 1024
    code, out = finish(process, timeout=240)
    print(f"peak RSS of `identify-queue import` over {lines:,} lines ({path.stat().st_size / 2**20:.0f} MB gzip, "
          f"~{uncompressed / 2**20:.0f} MB of JSON): {peak_mb:.1f} MB; {out.strip()}")  # fmt: skip
    assert code == 0, (tmp_path / "import.log").read_text()
    assert out.startswith(f"{lines:,} enqueued, 0 rejected, {lines:,} lines read")
    assert total_of(redis_client, keys, queue_config.shards) == lines
    # The interpreter with redis, orjson and click loaded takes about 30 MB; the file alone is ~110 MB.
    assert 0 < peak_mb < 90, f"peak RSS {peak_mb:.1f} MB: is the file held in memory?"


@pytest.mark.parametrize("kind", ["file", "gzip", "stdin"])
@pytest.mark.timeout(180)
def test_killed_at_any_moment_then_resumed_enqueues_every_line_exactly_once(
    kind: str, tmp_path: Path, queue_config: QueueConfig, keys: Keys, redis_client: redis.Redis
) -> None:
    # Given an import of 200,000 lines, killed with SIGKILL once its recorded progress has moved
    lines = 200_000
    path = tmp_path / ("users.jsonl.gz" if kind == "gzip" else "users.jsonl")
    write_lines(path, lines, compress=kind == "gzip")
    args = ["-", "--job", "piped"] if kind == "stdin" else [str(path)]
    log = tmp_path / "import.log"

    def start(*extra: str) -> subprocess.Popen[bytes]:
        if kind != "stdin":
            return start_import(queue_config, *args, *extra, log=log)
        with open(path, "rb") as stdin:
            return start_import(queue_config, *args, *extra, stdin=stdin, log=log)

    job = keys.import_job("piped") if kind == "stdin" else None
    first = start("--chunk-size", "500")

    def progress_key() -> str | None:
        found = list(redis_client.scan_iter(match=keys.import_job("*")))
        return found[0].decode() if found else None

    job = job or wait_until(progress_key, 60, "the job's progress key")
    wait_until(lambda: int(redis_client.hget(job, "line") or 0) >= 20_000, 60, "progress past line 20,000")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.stdout is not None
    first.stdout.close()
    # Then what is queued is what the job's progress says, or one chunk more: a chunk goes to its
    # shards (each recording its lines with it) before the job's hash records it, so a kill between
    # the two leaves that chunk queued, and the resumed run's shards leave its lines out
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(job).items()}
    assert state["state"] == "running", "the import finished before it was killed: nothing was tested"
    killed_at = int(state["line"])
    assert int(state["enqueued"]) == killed_at < lines
    assert killed_at <= queued_count(redis_client, keys, queue_config.shards) <= killed_at + 500

    # When it is resumed
    second = start("--resume", "--chunk-size", "700")
    code, out = finish(second)
    # Then it goes on from there, and every line is queued exactly once
    assert code == 0, log.read_text()
    assert f"{lines:,} enqueued, 0 rejected, {lines:,} lines read" in out
    assert f"resumed after line {killed_at:,}, {lines - killed_at:,} lines this run" in out
    seqs = queued_seqs(redis_client, keys, queue_config.shards)
    assert len(seqs) == lines, f"{len(seqs) - lines:+} records"
    assert sorted(seqs) == list(range(lines))
    assert redis_client.hget(job, "state") == b"finished"


@pytest.mark.timeout(180)
def test_a_full_queue_makes_the_import_wait_until_workers_drain_it(
    tmp_path: Path, queue_config: QueueConfig, keys: Keys, redis_client: redis.Redis, start_worker: StartWorker,
    amplitude: LocalAmplitudeProcess,
) -> None:  # fmt: skip
    # Given a queue capped at 2,000 records and an import of 10,000, with no worker yet
    users, per_user = 1000, 10
    path = tmp_path / "updates.jsonl"
    path.write_bytes(b"".join(b'{"user_id":"user-%05d","user_properties":{"$set":{"seq":%d}}}\n' % (u, i)
                              for i in range(per_user) for u in range(users)))  # fmt: skip
    log = tmp_path / "import.log"
    process = start_import(queue_config, str(path), "--chunk-size", "500", "--progress-every", "0", log=log,
                           IDENTIFY_MAX_QUEUED="2000")  # fmt: skip
    # When the queue fills, the import waits (says so, and stays alive) instead of failing
    wait_until(lambda: "queue full" in log.read_text(), 60, "the import to report a full queue")
    assert total_of(redis_client, keys, queue_config.shards) == 2000
    assert process.poll() is None, log.read_text()
    # Then once a worker drains the queue, the import completes and every update arrives, in order
    start_worker()
    code, out = finish(process)
    assert code == 0, log.read_text()
    assert out.startswith(f"{users * per_user:,} enqueued, 0 rejected")
    assert "queue has room again" in log.read_text()
    wait_until(lambda: amplitude.stats()["accepted"] >= users * per_user, 60, "every update delivered")
    assert check_delivery(amplitude.accepted(), users, per_user) == 0
