"""The import commits a chunk while it reads the next: what an interruption leaves is still exact.

Each test stops an import while a chunk is in flight (committing on its own thread) and the next
is being read: a chunk whose enqueue fails, Ctrl-C in process, a real SIGINT.  Then what Redis
holds is what the job's position says, the rejects file has no line the next chunk read, and a
resume enqueues every line exactly once, each user's lines in input order, with every rejection
written exactly once.  (Killed with SIGKILL at any moment: tests/e2e/test_import_process.py.)
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from producers.contract.entry import decode
from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.importer.job import JobState
from producers.importer.parse import Item
from producers.importer.run import Importer, ImportOptions
from producers.importer.source import LineSource
from producers.producer import IdentifyProducer
from tests.support import interrupt, running, wait_until
from worker.devtools.local_stack import COMMAND

pytestmark = pytest.mark.usefixtures("clear_namespace")

USERS = 37
#: (line number, seq): each input item's line and the seq it carries; seq None for a refused line.
Items = list[tuple[int, int | None]]


def overlap_input(count: int) -> tuple[bytes, Items]:
    """``count`` items as JSON Lines: updates of 37 users numbered by ``seq``, every 53rd refused (an
    id too short), and now and then a blank line (read, neither enqueued nor rejected)."""
    lines: list[bytes] = []
    items: Items = []
    for i in range(count):
        if i % 97 == 13:
            lines.append(b"\n")
        if i % 53 == 7:
            lines.append(b'{"user_id":"usr","user_properties":{"$set":{"seq":%d}}}\n' % i)
            items.append((len(lines), None))
        else:
            lines.append(b'{"user_id":"user-%05d","user_properties":{"$set":{"seq":%d}}}\n' % (i % USERS, i))
            items.append((len(lines), i))
    return b"".join(lines), items


def queued_by_user(client: redis.Redis, keys: Keys, shards: int) -> dict[str, list[int]]:
    """Each user's seqs in the order their shard holds them."""
    found: dict[str, list[int]] = defaultdict(list)
    for s in range(shards):
        for raw in client.lrange(keys.shard(s).queue, 0, -1):
            record = orjson.loads(decode(raw).data)
            found[record["user_id"]].append(record["user_properties"]["$set"]["seq"])
    return dict(found)


def expected_by_user(items: Items) -> dict[str, list[int]]:
    expected: dict[str, list[int]] = defaultdict(list)
    for _, seq in items:
        if seq is not None:
            expected[f"user-{seq % USERS:05d}"].append(seq)
    return dict(expected)


def rejected_lines(path: Path) -> list[int]:
    return [orjson.loads(raw)["line"] for raw in path.read_bytes().splitlines()] if path.exists() else []


def refused(items: Items) -> list[int]:
    return [line for line, seq in items if seq is None]


def assert_stopped_after(client: redis.Redis, keys: Keys, shards: int, state: JobState | None, committed: Items,
                         rejects: Path, told: Items) -> None:  # fmt: skip
    """An interrupted import stands after its ``committed`` items: the job's position and counts,
    what Redis holds, and the rejects file, which holds the rejections of the ``told`` items."""
    assert state is not None and state.line == committed[-1][0]
    assert queued_by_user(client, keys, shards) == expected_by_user(committed)
    assert state.rejected == len(refused(committed))
    assert rejected_lines(rejects) == refused(told)


def through(items: Items, line: int) -> Items:
    """The items on lines up to ``line``."""
    return [item for item in items if item[0] <= line]


class _Counted(Importer):
    """An Importer that counts the items it has read, and says when it has read ``signal_at``."""

    def __init__(self, *args: Any, signal_at: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read = 0
        self.signal_at = signal_at
        self.reached = threading.Event()

    def _items(self, source: LineSource, fmt: str) -> Iterator[Item]:
        for item in super()._items(source, fmt):
            self.read += 1
            if self.read == self.signal_at:
                self.reached.set()
            yield item


def test_a_chunk_whose_enqueue_fails_stops_the_import_before_another_is_read(
    tmp_path: Path, queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given 3,000 items in chunks of 100, and a Redis that fails the 7th chunk's enqueue once the
    # 8th chunk has been read (so the 8th was read, rejections and all, while the 7th was in flight)
    data, items = overlap_input(3000)
    path = tmp_path / "users.jsonl"
    path.write_bytes(data)
    rejects = tmp_path / "rejects.jsonl"
    options = ImportOptions(job="overlap", chunk_size=100, rejects=str(rejects), progress="none")
    with IdentifyProducer(queue_config) as producer:
        importer = _Counted(producer, options, signal_at=800)
        real = producer.enqueue_chunk
        calls = 0

        def failing(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 7:
                assert importer.reached.wait(10), "the 8th chunk was not read while the 7th was in flight"
                raise StoreError("enqueue: Redis went away (injected)")
            return real(*args, **kwargs)

        producer.enqueue_chunk = failing  # type: ignore[method-assign]
        # When the import runs, the error is raised as the 8th chunk is handed over: nothing past it is read
        with pytest.raises(StoreError, match="injected"):
            importer.run(str(path))
        assert importer.read == 800
        state = importer.recorded()
    # Then Redis holds the first six chunks, as the job's position says, and the rejects file the
    # rejections of the seven chunks that began to commit (written before their enqueue), none of the 8th
    assert_stopped_after(redis_client, keys, queue_config.shards, state, items[:600], rejects, items[:700])

    # When it is resumed, every line is enqueued once, in order, and every rejection written once
    with IdentifyProducer(queue_config) as producer:
        report = Importer(producer, ImportOptions(job="overlap", chunk_size=100, rejects=str(rejects),
                                                  progress="none", resume=True)).run(str(path))  # fmt: skip
    assert (report.resumed_from, report.lines) == (items[599][0], items[-1][0])
    assert (report.enqueued, report.rejected) == (len(items) - len(refused(items)), len(refused(items)))
    assert queued_by_user(redis_client, keys, queue_config.shards) == expected_by_user(items)
    assert rejected_lines(rejects) == refused(items)


class _Interrupting(io.RawIOBase):
    """Stdin that gives a line per read, and Ctrl-C (KeyboardInterrupt) as line ``stop`` is asked for,
    after setting ``reached``."""

    def __init__(self, data: bytes, stop: int) -> None:
        super().__init__()
        self._lines = data.splitlines(keepends=True)
        self._line = 0
        self._at = 0
        self._stop = stop
        self.reached = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._line == self._stop - 1 and self._at == 0:
            self.reached.set()
            raise KeyboardInterrupt
        if self._line >= len(self._lines):
            return 0
        rest = self._lines[self._line][self._at :]
        n = min(len(buffer), len(rest))
        buffer[:n] = rest[:n]
        self._at += n
        if self._at == len(self._lines[self._line]):
            self._line, self._at = self._line + 1, 0
        return n


def test_ctrl_c_while_the_next_chunk_is_read_lets_the_chunk_in_flight_commit(
    tmp_path: Path, queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given stdin of 2,000 items in chunks of 100, where Ctrl-C comes as the 550th item is read,
    # while the 5th chunk is still being enqueued
    data, items = overlap_input(2000)
    stdin = _Interrupting(data, stop=items[549][0])
    rejects = tmp_path / "rejects.jsonl"
    options = ImportOptions(job="piped", chunk_size=100, rejects=str(rejects), progress="none")
    with IdentifyProducer(queue_config) as producer:
        real = producer.enqueue_chunk
        calls = 0

        def slow(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 5:
                assert stdin.reached.wait(10), "Ctrl-C did not come while the 5th chunk was in flight"
            return real(*args, **kwargs)

        producer.enqueue_chunk = slow  # type: ignore[method-assign]
        importer = Importer(producer, options, stdin=stdin)  # type: ignore[arg-type]
        with pytest.raises(KeyboardInterrupt):
            importer.run("-")
        state = importer.recorded()
    # Then the chunk in flight committed before run() gave the interrupt back: where the job stands
    # (what --resume goes on from) is after it, and nothing of the next chunk is anywhere
    assert_stopped_after(redis_client, keys, queue_config.shards, state, items[:500], rejects, items[:500])

    # When the same input is given again with --resume, every line is enqueued once, in order
    with IdentifyProducer(queue_config) as producer:
        options = ImportOptions(job="piped", chunk_size=100, rejects=str(rejects), progress="none", resume=True)
        report = Importer(producer, options, stdin=io.BytesIO(data)).run("-")
    assert (report.resumed_from, report.lines, report.rejected) == (items[499][0], items[-1][0], len(refused(items)))
    assert queued_by_user(redis_client, keys, queue_config.shards) == expected_by_user(items)
    assert rejected_lines(rejects) == refused(items)


@pytest.mark.timeout(180)
def test_ctrl_c_mid_import_names_what_redis_holds_and_the_command_finishes_it_exactly_once(
    tmp_path: Path, queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    # Given a real import of 200,000 items in chunks of 500, interrupted by SIGINT once it is under way
    data, items = overlap_input(200_000)
    path = tmp_path / "users.jsonl"
    path.write_bytes(data)
    rejects = tmp_path / "rejects.jsonl"
    log = tmp_path / "import.err"
    env = {**os.environ, "REDIS_URL": queue_config.redis_url, "IDENTIFY_NAMESPACE": queue_config.namespace,
           "IDENTIFY_SHARDS": str(queue_config.shards)}  # fmt: skip
    args = [str(path), "--chunk-size", "500", "--progress", "none", "--rejects", str(rejects)]
    with running([*COMMAND, "import", *args], env, log) as process:
        job = wait_until(lambda: next(iter(redis_client.scan_iter(match=keys.import_job("*"))), None), 60,
                         "the job's progress key").decode()  # fmt: skip
        wait_until(lambda: int(redis_client.hget(job, "line") or 0) >= 20_000, 60, "progress past line 20,000")
        code = interrupt(process)
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text
    # Then the message names what Redis holds: the chunk in flight at Ctrl-C committed whole, the next none
    state = {k.decode(): v.decode() for k, v in redis_client.hgetall(job).items()}
    assert state["state"] == "running", "the import finished before it was interrupted: nothing was tested"
    line = int(state["line"])
    done = through(items, line)
    assert len(done) % 500 == 0, f"line {line:,} is not where a chunk ends"
    last = text.splitlines()[-1]
    assert last.startswith(f"identify-queue: interrupted at line {line:,} ({len(done) - len(refused(done)):,} "
                           f"enqueued, {len(refused(done)):,} rejected), recorded in job ")  # fmt: skip
    assert queued_by_user(redis_client, keys, queue_config.shards) == expected_by_user(done)
    assert rejected_lines(rejects) == refused(done)

    # When the command it printed is run, every line is enqueued once, in order, each rejection written once
    command = shlex.split(last.split("go on with: ", 1)[1])
    finished = subprocess.run([*COMMAND, *command[1:]], env=env, capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
    assert finished.returncode == 1, finished.stderr  # 1: the job has rejected lines
    assert f"resumed after line {line:,}" in finished.stdout
    assert queued_by_user(redis_client, keys, queue_config.shards) == expected_by_user(items)
    assert rejected_lines(rejects) == refused(items)
