"""`identify-queue import` in process against the tests' redis-server: formats, rejects, progress, skips.

The runs that need a real process (memory, kill -9, a full queue drained by a worker) are in
tests/test_import_process.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from producers.contract.entry import decode, shard_of
from producers.contract.errors import QueueFull, SourceError
from producers.contract.keys import Keys
from producers.contract.scripts import Script, source
from producers.contract.settings import QueueConfig
from producers.importer.job import JobStore
from producers.importer.report import Snapshot, make_display
from producers.importer.run import Importer, ImportOptions
from producers.importer.source import LineSource, describe_source
from producers.producer import IdentifyProducer
from tests.support import AnswerDroppingProxy
from worker.cli.main import main


class Run:
    def __init__(self, config: QueueConfig) -> None:
        self.env = {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace,
                    "IDENTIFY_SHARDS": str(config.shards)}  # fmt: skip

    def __call__(self, *args: str, input: bytes | str | None = None, **extra: str) -> Result:
        return CliRunner().invoke(main, ["import", *args], env={**self.env, **extra}, input=input,
                                  catch_exceptions=False)  # fmt: skip


@pytest.fixture
def run(queue_config: QueueConfig) -> Run:
    return Run(queue_config)


@pytest.fixture
def queued(redis_client: redis.Redis, queue_config: QueueConfig) -> Iterator[Any]:
    keys = Keys(queue_config.namespace)

    def read() -> list[dict[str, Any]]:
        raws = [e for s in range(queue_config.shards) for e in redis_client.lrange(keys.shard(s).queue, 0, -1)]
        return [orjson.loads(decode(r).data) for r in raws]

    yield read
    for key in redis_client.scan_iter(match=keys.pattern(), count=1000):
        redis_client.unlink(key)


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r.get("user_id") or r["device_id"]: r for r in records}


CSV = (
    "uid,Email,age,vip,tags,device,note\n"
    'user-00001,a@x.com,31,true,"[""a"",""b""]",,hello\n'
    "user-00002,,,,,,\n"
    ",b@x.com,40,no,,device-0003,\n"
    "user-00004,d@x.com,forty,yes,,,\n"
    'user-00005,"two\nlines",22,0,,,\n'
    "user-00006,f@x.com,7\n"
)
CSV_FLAGS = ("--map", "uid:user_id", "--map", "Email:email", "--map", "device:device_id",
             "--type", "age=int", "--type", "vip=bool", "--type", "tags=json")  # fmt: skip


def test_csv_columns_become_records_with_renames_types_and_empty_cells(run: Run, tmp_path: Path,
                                                                       queued: Any) -> None:  # fmt: skip
    path = tmp_path / "users.csv"
    path.write_text(CSV)
    result = run(str(path), *CSV_FLAGS)
    assert result.exit_code == 1, result.output
    records = by_id(queued())
    assert records == {
        "user-00001": {"user_id": "user-00001", "user_properties": {
            "$set": {"email": "a@x.com", "age": 31, "vip": True, "tags": ["a", "b"], "note": "hello"}}},
        "user-00002": {"user_id": "user-00002"},
        "device-0003": {"device_id": "device-0003",
                        "user_properties": {"$set": {"email": "b@x.com", "age": 40, "vip": False}}},
        "user-00005": {"user_id": "user-00005",
                       "user_properties": {"$set": {"email": "two\nlines", "age": 22, "vip": False}}},
    }  # fmt: skip
    # the bad rows, by the line they start on (the header is line 1; user-00005 spans lines 6-7)
    assert "line 5: user_properties.$set.age: column 'age': expected an integer, got 'forty'" in result.stderr
    assert "line 8: identification: 3 cells, the header has 7" in result.stderr
    assert result.stdout.startswith("4 enqueued, 2 rejected, 8 lines read, 0 skipped unchanged")


def test_csv_with_tabs_a_bom_and_empty_cells_sent_as_unset(run: Run, tmp_path: Path, queued: Any) -> None:
    path = tmp_path / "users.tsv"
    path.write_bytes("\ufeffuser_id\tplan\tseats\r\nuser-00001\t\t3\r\n".encode())
    result = run(str(path), "--type", "seats=int", "--empty", "unset")
    assert result.exit_code == 0, result.output
    assert queued() == [{"user_id": "user-00001", "user_properties": {"$set": {"seats": 3}, "$unset": {"plan": "-"}}}]


def test_a_csv_header_mistake_stops_before_anything_is_enqueued(run: Run, tmp_path: Path, queued: Any) -> None:
    path = tmp_path / "users.csv"
    path.write_text(CSV)
    result = run(str(path), "--map", "Mail:email")
    assert result.exit_code == 2
    assert "--map: no column named 'Mail'" in result.stderr
    assert queued() == []


def jsonl(count: int, start: int = 0) -> bytes:
    return b"".join(b'{"user_id":"user-%06d","user_properties":{"$set":{"seq":%d}}}\n' % (i, i)
                    for i in range(start, start + count))  # fmt: skip


def test_gzip_is_recognised_by_its_content_not_its_name(run: Run, tmp_path: Path, queued: Any) -> None:
    named = tmp_path / "users.jsonl.gz"
    named.write_bytes(gzip.compress(jsonl(1500)))
    unnamed = tmp_path / "more.jsonl"  # gzip inside, no .gz in the name
    unnamed.write_bytes(gzip.compress(jsonl(500, start=1500)))
    csv = tmp_path / "users.csv"
    csv.write_bytes(gzip.compress(b"user_id,plan\nuser-999999,pro\n"))
    for path in (named, unnamed, csv):
        result = run(str(path))
        assert result.exit_code == 0, result.output
    seqs = sorted(r["user_properties"]["$set"].get("seq", -1) for r in queued())
    assert seqs == [-1, *range(2000)]


def test_a_damaged_gzip_gives_every_line_before_the_damage_then_names_the_line(tmp_path: Path) -> None:
    whole = gzip.compress(jsonl(100_000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])  # a transfer cut short
    inflated = zlib.decompressobj(wbits=31).decompress(whole[: len(whole) // 2])
    whole_lines = inflated[: inflated.rindex(b"\n") + 1]
    got: list[bytes] = []
    with LineSource(describe_source(str(path))) as source, pytest.raises(SourceError) as caught:
        got.extend(source)
    assert b"".join(got) == whole_lines  # read ahead in large blocks, yet no line before the cut is lost
    assert f"cannot read past line {len(whole_lines.splitlines())}: Compressed file ended" in str(caught.value)


def test_stdin_plain_and_gzip(run: Run, queued: Any) -> None:
    result = run("-", "--job", "stdin-plain", input=jsonl(700))
    assert result.exit_code == 0, result.output
    result = run("-", "--job", "stdin-gzip", input=gzip.compress(jsonl(300, start=700)))
    assert result.exit_code == 0, result.output
    result = run("-", "--format", "csv", input="device_id,plan\ndevice-0001,pro\n")
    assert result.exit_code == 0, result.output
    assert "cannot be resumed" in result.stderr  # stdin without --job
    assert len(queued()) == 1001


def test_rejects_file_has_each_rejected_line_with_its_reason(run: Run, tmp_path: Path, queued: Any) -> None:
    path = tmp_path / "users.jsonl"
    path.write_bytes(
        b'{"user_id": "user-00001"}\n'
        b'{"user_id": "usr"}\n'
        b"\n"
        b"not json\n"
        b'{"device_id": "device-0002", "user_properties": {"$add": {"n": "x"}}}\n'
        b'{"user_id": "user-00003", "plan": "\xff"}\n'
    )
    rejects = tmp_path / "rejects.jsonl"
    result = run(str(path), "--rejects", str(rejects))
    assert result.exit_code == 1
    entries = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(e["line"], e["field"], e["rule"]) for e in entries] == [
        (2, "user_id", "too_short"), (4, "", "bad_json"), (5, "user_properties.$add.n", "not_number"),
        (6, "", "bad_json"),
    ]  # fmt: skip
    assert entries[0]["text"] == '{"user_id": "usr"}'
    assert entries[0]["reason"] == "must be at least 5 characters, got 3"
    assert entries[3]["text"] == '{"user_id": "user-00003", "plan": "\ufffd"}'
    assert "line 2: user_id: must be at least 5 characters" in result.stderr  # stderr too
    assert len(queued()) == 1


def test_progress_lines_when_stderr_is_not_a_terminal(run: Run, tmp_path: Path, queued: Any) -> None:
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(1000))
    result = run(str(path), "--chunk-size", "100", "--progress-every", "0")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert len(lines) >= 10  # one per chunk, and one as the job is marked finished
    assert lines[0].startswith("progress: 100 lines read, 100 enqueued, 0 rejected, 0 skipped unchanged;")
    assert lines[-1].startswith("progress: 1,000 lines read, 1,000 enqueued")
    assert "100.0% of" in lines[-1] and "ETA" in lines[-1] and "lines/s" in lines[-1]
    assert "\r" not in result.stderr  # no bar
    quiet = run(str(path), "--progress", "none", "--restart")
    assert "progress" not in quiet.stderr


def test_skip_unchanged_sends_only_what_changed(run: Run, tmp_path: Path, queued: Any, redis_client: redis.Redis,
                                               queue_config: QueueConfig) -> None:  # fmt: skip
    rows = [f"user-{u:05d},plan-{u % 3},{u}" for u in range(2000)]
    path = tmp_path / "users.csv"
    path.write_text("user_id,plan,seats\n" + "\n".join(rows) + "\n")
    flags = ("--skip-unchanged", "--type", "seats=int")
    first = run(str(path), *flags)
    assert first.stdout.startswith("2,000 enqueued, 0 rejected, 2,001 lines read, 0 skipped unchanged")

    second = run(str(path), *flags)  # a finished job run again starts over
    assert second.stdout.startswith("0 enqueued, 0 rejected, 2,001 lines read, 2,000 skipped unchanged"), second.stdout
    assert len(queued()) == 2000

    rows[1234] = "user-01234,enterprise,1234"
    path.write_text("user_id,plan,seats\n" + "\n".join(rows) + "\n")
    third = run(str(path), *flags)
    assert third.stdout.startswith("1 enqueued, 0 rejected, 2,001 lines read, 1,999 skipped unchanged"), third.stdout
    latest = [r for r in queued() if r["user_id"] == "user-01234"]
    assert [r["user_properties"]["$set"]["plan"] for r in latest] == ["plan-1", "enterprise"]

    # the memory it costs: one small string per user
    keys = Keys(queue_config.namespace)

    def fingerprint(user_key: str) -> str:
        return keys.shard(shard_of(user_key, queue_config.shards)).fingerprint(user_key)

    sizes = [redis_client.memory_usage(fingerprint(f"u:user-{u:05d}")) or 0 for u in range(2000)]
    per_user = sum(sizes) / len(sizes)
    print(f"fingerprint: {per_user:.0f} bytes per user (MEMORY USAGE, a {len(fingerprint('u:user-00000'))}"
          "-character key)")  # fmt: skip
    assert per_user < 120
    assert 0 < redis_client.pttl(fingerprint("u:user-00000")) <= 8 * 86_400_000


def test_skip_unchanged_never_skips_a_repeated_add_nor_what_follows_it(run: Run, tmp_path: Path,
                                                                       queued: Any) -> None:  # fmt: skip
    path = tmp_path / "events.jsonl"
    set_n = b'{"user_id": "user-00003", "user_properties": {"$set": {"n": 5}}}\n'
    add_n = b'{"user_id": "user-00003", "user_properties": {"$add": {"n": 1}}}\n'
    path.write_bytes(
        b'{"user_id": "user-00001", "user_properties": {"$add": {"logins": 1}}}\n'
        b'{"user_id": "user-00002", "user_properties": {"$set": {"plan": "pro"}}}\n'
        b'{"user_id": "user-00002", "user_properties": {"$set": {"plan": "pro"}}}\n' + set_n
    )
    assert run(str(path), "--skip-unchanged").stdout.startswith("3 enqueued, 0 rejected, 4 lines read, 1 skipped")
    assert run(str(path), "--skip-unchanged").stdout.startswith("1 enqueued, 0 rejected, 4 lines read, 3 skipped")
    path.write_bytes(set_n + add_n)  # n is 5 already: the $set is skipped, the $add sent
    assert run(str(path), "--skip-unchanged").stdout.startswith("1 enqueued, 0 rejected, 2 lines read, 1 skipped")
    # n is 6 in Amplitude now, not what was last set: "n = 5" must go out again
    path.write_bytes(set_n)
    assert run(str(path), "--skip-unchanged").stdout.startswith("1 enqueued, 0 rejected, 1 lines read, 0 skipped")
    assert [r["user_id"] for r in queued()].count("user-00001") == 2
    assert [r["user_properties"] for r in queued() if r["user_id"] == "user-00003"] == [
        {"$set": {"n": 5}}, {"$add": {"n": 1}}, {"$set": {"n": 5}},
    ]  # fmt: skip


class _StopAfter:
    """A display that interrupts the import (as Ctrl-C would) once ``lines`` lines are committed."""

    def __init__(self, lines: int) -> None:
        self.lines = lines

    def start(self, total: int | None, initial: int) -> None:
        pass

    def update(self, snap: Snapshot) -> None:
        if snap.lines >= self.lines:
            raise KeyboardInterrupt

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_interrupted_job_asks_for_resume_or_restart_and_refuses_another_input(
    run: Run, tmp_path: Path, queue_config: QueueConfig, queued: Any
) -> None:
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(3000))
    with IdentifyProducer(queue_config) as producer, pytest.raises(KeyboardInterrupt):
        Importer(producer, ImportOptions(job="nightly", chunk_size=1000), display=_StopAfter(1000)).run(str(path))
    assert len(queued()) == 1000

    result = run(str(path), "--job", "nightly")
    assert result.exit_code == 2
    assert "job nightly was interrupted at line 1,000 (1,000 enqueued): pass --resume" in result.stderr

    with path.open("ab") as f:  # the export was rewritten since
        f.write(jsonl(1, start=3000))
    result = run(str(path), "--job", "nightly", "--resume")
    assert result.exit_code == 2
    assert "would skip the wrong lines" in result.stderr
    assert len(queued()) == 1000

    result = run(str(path), "--job", "nightly", "--restart")
    assert result.exit_code == 0, result.output
    assert "starting over" in result.stderr
    assert len(queued()) == 1000 + 3001


def test_resume_in_process_after_an_interruption_enqueues_the_rest_once(tmp_path: Path, queue_config: QueueConfig,
                                                                        queued: Any, run: Run) -> None:  # fmt: skip
    path = tmp_path / "users.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(2500)))
    with IdentifyProducer(queue_config) as producer, pytest.raises(KeyboardInterrupt):
        Importer(producer, ImportOptions(chunk_size=1000), display=_StopAfter(2000)).run(str(path))
    result = run(str(path), "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed after line 2,000, 500 lines this run" in result.stdout
    assert sorted(r["user_properties"]["$set"]["seq"] for r in queued()) == list(range(2500))
    again = run(str(path), "--resume")
    assert again.exit_code == 0 and "nothing to resume" in again.stderr
    assert len(queued()) == 2500


@pytest.mark.parametrize("chunk_size", [300, 1000])
def test_a_resume_behind_what_the_shards_have_enqueues_every_line_once(
    tmp_path: Path, queue_config: QueueConfig, queued: Any, redis_client: redis.Redis, run: Run, chunk_size: int
) -> None:  # fmt: skip
    # Given a job whose chunks up to line 2,000 reached the shards while its hash recorded only
    # line 1,000: what a run stopped between a chunk's enqueue and the job's advance leaves (each
    # shard's lines go in with its records, the job's after them)
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(2500))
    with IdentifyProducer(queue_config) as producer, pytest.raises(KeyboardInterrupt):
        Importer(producer, ImportOptions(job="nightly", chunk_size=500), display=_StopAfter(2000)).run(str(path))
    job = Keys(queue_config.namespace).import_job("nightly")
    assert redis_client.hget(job, "line") == b"2000"
    redis_client.hset(job, mapping={"line": 1000, "offset": len(jsonl(1000)), "enqueued": 1000})
    # When it is resumed, with chunks that start before the shards' line (sent first without the
    # records' lines, refused as IMPORT_AHEAD, then with them) and after it
    result = run(str(path), "--job", "nightly", "--resume", "--chunk-size", str(chunk_size))
    # Then lines 1,001 to 2,000 are left out where they already are, and every line is queued once
    assert result.exit_code == 0, result.output
    assert "resumed after line 1,000, 1,500 lines this run" in result.stdout
    assert sorted(r["user_properties"]["$set"]["seq"] for r in queued()) == list(range(2500))
    assert redis_client.hget(job, "enqueued") == b"2500"


def test_an_uninterrupted_import_never_sends_the_records_lines(
    tmp_path: Path, queue_config: QueueConfig, queued: Any
) -> None:  # fmt: skip
    # Given a job's import that nothing interrupts
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(2500))
    with_lines: list[bool] = []
    with IdentifyProducer(queue_config) as producer:
        real = producer.enqueue_chunk

        def spy(*args: Any, **kwargs: Any) -> Any:
            with_lines.append(kwargs.get("lines") is not None)
            return real(*args, **kwargs)

        producer.enqueue_chunk = spy  # type: ignore[method-assign]
        Importer(producer, ImportOptions(job="nightly", chunk_size=300)).run(str(path))
    # Then no chunk is refused as IMPORT_AHEAD, and none carries its records' lines
    assert with_lines == [False] * 9
    assert len(queued()) == 2500


class OneShardPerWait:
    """Workers for the cluster-path tests: each wait of the importer for room drains one of two
    shards, in turn, into ``drained``."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.drained: list[bytes] = []
        self.waits = 0

    def drain(self, shard: int) -> None:
        k = self.keys.shard(shard)
        with self.client.pipeline() as pipe:
            pipe.lrange(k.queue, 0, -1).delete(k.queue)
            items = pipe.execute()[0]
        self.client.decrby(k.total, len(items))
        self.drained.extend(items)

    def wait(self, _: float) -> None:
        self.drain(self.waits % 2)
        self.waits += 1


@pytest.mark.shards(2)
@pytest.mark.timeout(30)  # sending a written part again, the retries could rewrite it forever
@pytest.mark.parametrize("job", ["nightly", None])  # None: stdin without --job, no lines to go by
def test_on_a_cluster_a_chunk_partly_written_before_the_queue_filled_is_completed_once(
    tmp_path: Path, queue_config: QueueConfig, redis_client: redis.Redis, job: str | None
) -> None:  # fmt: skip
    # Given a producer that calls each shard on its own, as on a Redis Cluster (one Redis here),
    # with room for 300 records per shard, and workers that drain one shard per wait: each chunk
    # of 500 (about 250 per shard) fills one shard while the other takes its part
    config = dataclasses.replace(queue_config, max_queued=600)
    keys = Keys(config.namespace)
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(3000))
    workers = OneShardPerWait(redis_client, keys)

    with IdentifyProducer(config) as producer:
        producer._cluster = True
        importer = Importer(producer, ImportOptions(job=job, chunk_size=500), sleep=workers.wait,
                            stdin=io.BytesIO(jsonl(3000)))  # fmt: skip
        report = importer.run(str(path) if job else "-")
    workers.drain(0)
    workers.drain(1)
    # Then every line is queued once (a part written before another shard refused is not sent
    # again: only the records of the refused parts are), and counted once
    assert workers.waits > 0
    seqs = sorted(orjson.loads(decode(r).data)["user_properties"]["$set"]["seq"] for r in workers.drained)
    assert seqs == list(range(3000))
    assert report.enqueued == 3000


@pytest.mark.shards(2)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("job", ["tonight", None])  # None: stdin without --job
def test_on_a_cluster_records_left_out_as_unchanged_by_a_part_written_before_the_queue_filled_count_as_skipped(
    tmp_path: Path, queue_config: QueueConfig, redis_client: redis.Redis, job: str | None
) -> None:  # fmt: skip
    # Given last night's 3,000 users imported with --skip-unchanged, and tonight's file in which
    # every other user changed; a producer that calls each shard on its own, as on a Redis Cluster,
    # with room for 200 records per shard, and workers that drain one shard per wait: each chunk of
    # 500 appends about 125 per shard, so one shard takes its part while the other is full
    config = dataclasses.replace(queue_config, max_queued=400)
    keys = Keys(config.namespace)
    first, tonight = tmp_path / "first.jsonl", tmp_path / "tonight.jsonl"
    first.write_bytes(jsonl(3000))
    tonight.write_bytes(b"".join(b'{"user_id":"user-%06d","user_properties":{"$set":{"seq":%d}}}\n'
                                 % (i, i + 10_000 * (i % 2)) for i in range(3000)))  # fmt: skip
    workers = OneShardPerWait(redis_client, keys)

    with IdentifyProducer(config) as producer:
        producer._cluster = True
        options = ImportOptions(job="last-night", chunk_size=500, skip_unchanged=True)
        Importer(producer, options, sleep=workers.wait).run(str(first))
        workers.drain(0)
        workers.drain(1)
        workers.drained.clear()
        partly: list[int] = []  # the unchanged records the written parts of each refused call left out
        real = producer.enqueue_chunk

        def spy(*args: Any, **kwargs: Any) -> Any:
            try:
                return real(*args, **kwargs)
            except QueueFull as full:
                partly.append(full.skipped)
                raise

        producer.enqueue_chunk = spy  # type: ignore[method-assign]
        options = ImportOptions(job=job, chunk_size=500, skip_unchanged=True)
        importer = Importer(producer, options, sleep=workers.wait, stdin=io.BytesIO(tonight.read_bytes()))
        report = importer.run(str(tonight) if job else "-")
        stored = JobStore(producer.client, keys, config.shards).read(job) if job else None
    workers.drain(0)
    workers.drain(1)
    # Then the changed users are queued once, and each count says what happened to its records,
    # in the report as in the job's record: the unchanged ones are skipped, not enqueued
    assert sum(partly) > 0  # a part was written, unchanged records left out, before a shard filled
    seqs = sorted(orjson.loads(decode(r).data)["user_properties"]["$set"]["seq"] for r in workers.drained)
    assert seqs == [i + 10_000 for i in range(1, 3000, 2)]
    assert (report.enqueued, report.skipped) == (1500, 1500)
    if job:
        assert stored is not None and (stored.enqueued, stored.skipped) == (1500, 1500)


@pytest.mark.parametrize("script", ["import_take", "enqueue", "import_advance"])
def test_a_chunk_or_a_progress_whose_answer_is_lost_is_enqueued_and_counted_once(
    tmp_path: Path, queue_config: QueueConfig, proxy: AnswerDroppingProxy, queued: Any, script: str
) -> None:  # fmt: skip
    # Given an import whose producer reaches Redis through a proxy that loses the answer to the
    # job's taking, the first chunk's enqueue or the job's first advance, after it ran (redis-py, a
    # producer's default, then sends it again: the taking finds the run's token; the enqueue is
    # refused, IMPORT_AHEAD, and sent with its lines, which the shards have; the advance finds its
    # line recorded)
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(2500))
    config = dataclasses.replace(queue_config, redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    with IdentifyProducer(config) as producer:
        sha = producer.client.script_load(source("producers", script))  # so the first call runs it
        assert sha == Script(None, "producers", script).sha
        proxy.drop_answer_to(sha.encode())
        report = Importer(producer, ImportOptions(job="nightly", chunk_size=1000)).run(str(path))
        stored = JobStore(producer.client, producer.keys, config.shards).read("nightly")
    # Then each line is queued once, and the job's record counts it once, as the report does
    assert proxy.dropped == 1
    assert (report.enqueued, len(queued())) == (2500, 2500)
    assert stored is not None and (stored.line, stored.enqueued, stored.skipped, stored.rejected) == (2500, 2500, 0, 0)


def test_the_python_api_alone(tmp_path: Path, queue_config: QueueConfig, queued: Any) -> None:
    path = tmp_path / "users.csv"
    path.write_text("id,Plan\nuser-00001,pro\nbad,pro\n")
    options = ImportOptions.from_cli(str(path), maps=("id:user_id", "Plan:plan"), progress="none")
    with IdentifyProducer(queue_config) as producer:
        report = Importer(producer, options).run(str(path))
    assert (report.lines, report.enqueued, report.rejected) == (3, 1, 1)
    assert queued() == [{"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}}}]
    with IdentifyProducer(queue_config) as producer:
        assert report.job is not None and report.job.startswith("users.csv-")
        state = JobStore(producer.client, producer.keys, queue_config.shards).read(report.job)
        assert state is not None and state.finished and (state.line, state.enqueued, state.rejected) == (3, 1, 1)


def test_a_terminal_gets_rate_and_counts_first_in_its_width(tmp_path: Path, queue_config: QueueConfig,
                                                            queued: Any) -> None:  # fmt: skip
    path = tmp_path / "users.jsonl"
    path.write_bytes(jsonl(3000))
    terminal = io.StringIO()
    display = make_display("bar", terminal)
    with IdentifyProducer(queue_config) as producer:
        Importer(producer, ImportOptions(chunk_size=500), display=display).run(str(path))
    display.close()
    text = terminal.getvalue()
    last = text.rsplit("\r\x1b[K", 1)[-1]
    assert last.endswith("| 3,000 lines, 3,000 enqueued, 0 rejected, 0 unchanged | 100%\n")
    assert max(len(line) for line in text.split("\r\x1b[K")) <= 80  # a StringIO has no size: the fallback width


@pytest.mark.parametrize("compress", [False, True])
def test_csv_resumes_after_its_header_and_keeps_one_reject_per_line(compress: bool, tmp_path: Path,
                                                                   queue_config: QueueConfig, queued: Any,
                                                                   run: Run) -> None:  # fmt: skip
    # Given a CSV of 3,000 rows, every 100th one bad, and a quoted newline in some
    rows = [f"user-{i:05d},{'x' if i % 100 == 0 else i},\"note\n{i}\"" if i % 7 == 0 else
            f"user-{i:05d},{'x' if i % 100 == 0 else i},plain" for i in range(3000)]  # fmt: skip
    text = ("uid,seq,note\n" + "\n".join(rows) + "\n").encode()
    path = tmp_path / "users.csv"
    path.write_bytes(gzip.compress(text) if compress else text)
    rejects = tmp_path / "rejects.jsonl"
    flags = ("--map", "uid:user_id", "--type", "seq=int", "--rejects", str(rejects))
    options = ImportOptions.from_cli(str(path), maps=flags[1:2], types=flags[3:4], rejects=str(rejects))
    # When it is interrupted after 2,000 rows, having written a reject a killed run could leave
    # past its last committed chunk
    with IdentifyProducer(queue_config) as producer, pytest.raises(KeyboardInterrupt):
        Importer(producer, options, display=_StopAfter(2000)).run(str(path))
    with rejects.open("ab") as f:
        f.write(b'{"line":999999,"field":"","rule":"bad_row","reason":"left by a killed run","text":""}\n')
    result = run(str(path), *flags, "--resume")
    # Then every good row is queued once, and each bad one is in the rejects file once
    assert result.exit_code == 1, result.output
    assert "resumed after line" in result.stdout
    assert sorted(r["user_properties"]["$set"]["seq"] for r in queued()) == [i for i in range(3000) if i % 100]
    entries = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert sorted(e["text"].split(",")[0] for e in entries) == [f"user-{i:05d}" for i in range(0, 3000, 100)]
    latest = {r["user_id"]: r["user_properties"]["$set"] for r in queued()}
    assert latest["user-00007"]["note"] == "note\n7" and latest["user-02807"]["note"] == "note\n2807"
    assert latest["user-02999"] == {"seq": 2999, "note": "plain"}


def test_a_flag_naming_no_column_leaves_no_interrupted_job(run: Run, tmp_path: Path) -> None:
    """A mistake found in the header stops the import before anything; the next run starts afresh."""
    path = tmp_path / "fresh.csv"
    path.write_text("uid,age\nuser-00001,31\n")
    first = run(str(path), "--map", "uid:user_id", "--type", "agee=int")
    assert first.exit_code == 2
    assert "agee" in first.stderr
    second = run(str(path), "--map", "uid:user_id", "--type", "age=int")
    assert second.exit_code == 0, second.output
    assert "1 enqueued" in second.stdout
