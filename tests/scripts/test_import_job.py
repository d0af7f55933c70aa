"""An import job's scripts against a real redis-server: the compare-and-set on the job's hash
(producers/lua/import_take.lua, import_withdraw.lua), a run taking the job's progress in each shard
(import_claim.lua), and the job's line recorded once every shard has the chunk (import_advance.lua)."""

from __future__ import annotations

import pytest
import redis

from producers.contract.errors import ImportTaken
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.importer.job import JOB_TTL_MS, Action, JobStore
from tests.support import pttl, redis_ms, snapshot, text_hash

TTL = 100_000
SHARDS = 4
RUNNING = {"run": "r1", "line": "40", "state": "running", "offset": "800", "enqueued": "39", "format": "csv"}


@pytest.fixture
def take(redis_client: redis.Redis) -> Script:
    return Script(redis_client, "producers", "import_take")


def test_a_job_with_no_progress_is_started_with_a_fresh_one(
    take: Script, redis_client: redis.Redis, keys: Keys
) -> None:
    job = keys.import_job("nightly")
    assert take([job], ["", "", "", "start", "r1", TTL, "state", "running", "line", 0, "format", "csv"]) == 1
    assert text_hash(redis_client, job) == {"run": "r1", "state": "running", "line": "0", "format": "csv"}
    assert TTL - 1000 < pttl(redis_client, job) <= TTL


def test_starting_over_replaces_every_field(take: Script, redis_client: redis.Redis, keys: Keys) -> None:
    job = keys.import_job("nightly")
    redis_client.hset(job, mapping=RUNNING)
    assert take([job], ["r1", "40", "running", "start", "r2", TTL, "state", "running", "line", 0]) == 1
    # nothing of the earlier run is left (its counts, its offset)
    assert text_hash(redis_client, job) == {"run": "r2", "state": "running", "line": "0"}


def test_resuming_takes_the_job_and_keeps_its_progress(take: Script, redis_client: redis.Redis, keys: Keys) -> None:
    job = keys.import_job("nightly")
    redis_client.hset(job, mapping=RUNNING)
    redis_client.pexpire(job, 5000)
    assert take([job], ["r1", "40", "running", "resume", "r2", TTL]) == 1
    assert text_hash(redis_client, job) == {**RUNNING, "run": "r2"}
    assert TTL - 1000 < pttl(redis_client, job) <= TTL


def test_keeping_a_finished_job_changes_nothing_but_its_ttl(
    take: Script, redis_client: redis.Redis, keys: Keys
) -> None:
    job = keys.import_job("nightly")
    finished = {**RUNNING, "state": "finished"}
    redis_client.hset(job, mapping=finished)
    assert take([job], ["r1", "40", "finished", "keep", "r2", TTL]) == 1
    assert text_hash(redis_client, job) == finished
    assert TTL - 1000 < pttl(redis_client, job) <= TTL


@pytest.mark.parametrize(
    "expected",
    [
        ["r0", "40", "running"],  # another run took it meanwhile
        ["r1", "39", "running"],  # a chunk landed meanwhile
        ["r1", "40", "finished"],  # the run finished meanwhile
        ["", "", ""],  # it was read as absent
    ],
)
def test_progress_that_moved_since_it_was_read_is_not_taken(
    take: Script, redis_client: redis.Redis, keys: Keys, namespace: str, expected: list[str]
) -> None:
    job = keys.import_job("nightly")
    redis_client.hset(job, mapping=RUNNING)
    before = snapshot(redis_client, namespace)
    for action in ("start", "resume", "keep"):
        assert take([job], [*expected, action, "r2", TTL, "line", 0]) == 0
    assert snapshot(redis_client, namespace) == before


def test_the_job_store_decides_and_takes_atomically(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys, SHARDS)
    job = keys.import_job("nightly")
    shards = [keys.shard(s).import_progress("nightly") for s in range(SHARDS)]
    # a shard still holding what an earlier, forgotten run of the job left
    redis_client.hset(shards[2], mapping={"run": "r0", "line": "90", "offset": "900", "enqueued": "5"})
    current = {"source": "/data/users.csv", "size": "10", "mtime_ns": "5", "format": "csv"}
    decision, stored, token = store.begin("nightly", current, resume=False, restart=False)
    assert (decision.action, stored) == (Action.START, None)
    progress = text_hash(redis_client, job)
    assert progress["run"] == token and progress["line"] == "0" and progress["state"] == "running"
    assert {k: progress[k] for k in current} == current
    assert JOB_TTL_MS - 1000 < pttl(redis_client, job) <= JOB_TTL_MS
    # starting, the run takes every shard afresh: nothing of an earlier run's lines is kept
    assert [text_hash(redis_client, p) for p in shards] == [{"run": token}] * SHARDS
    assert all(JOB_TTL_MS - 1000 < pttl(redis_client, p) <= JOB_TTL_MS for p in shards)
    # a second run resuming it takes it with a new token, from the same position, and every shard
    # keeps the lines it has (so that it leaves them out)
    redis_client.hset(job, "line", 12)
    redis_client.hset(shards[1], mapping={"line": "15", "offset": "150", "enqueued": "3"})
    decision, stored, second = store.begin("nightly", current, resume=True, restart=False)
    assert decision.action is Action.RESUME and stored is not None and stored.line == 12
    assert second != token
    assert text_hash(redis_client, job)["run"] == second
    assert text_hash(redis_client, shards[1]) == {"run": second, "line": "15", "offset": "150", "enqueued": "3"}
    assert [text_hash(redis_client, p) for p in shards[:1] + shards[2:]] == [{"run": second}] * (SHARDS - 1)
    # and the first run is refused, at its next chunk's advance
    with pytest.raises(ImportTaken):
        store.advance("nightly", token, line=20, offset=200, enqueued=1, skipped=0, rejected=0, finished=False)


def test_a_finished_job_kept_as_it_is_takes_no_shard(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys, SHARDS)
    current = {"source": "/data/users.csv", "size": "10", "mtime_ns": "5", "format": "csv"}
    redis_client.hset(keys.import_job("nightly"), mapping={**RUNNING, **current, "state": "finished"})
    shard = keys.shard(0).import_progress("nightly")
    redis_client.hset(shard, mapping={"run": "r1", "line": "40"})
    decision, _, _ = store.begin("nightly", current, resume=True, restart=False)
    assert decision.action is Action.DONE
    assert text_hash(redis_client, shard) == {"run": "r1", "line": "40"}


@pytest.mark.parametrize(
    ("progress", "token", "withdrawn"),
    [
        ({"run": "r1", "line": "0", "state": "running"}, "r1", True),
        ({"run": "r1", "line": "1", "state": "running"}, "r1", False),  # it advanced: a real interruption
        ({"run": "r2", "line": "0", "state": "running"}, "r1", False),  # another run's
        ({}, "r1", False),
    ],
)
def test_a_job_is_withdrawn_only_by_its_run_before_its_first_line(
    redis_client: redis.Redis, keys: Keys, progress: dict[str, str], token: str, withdrawn: bool
) -> None:
    job = keys.import_job("nightly")
    if progress:
        redis_client.hset(job, mapping=progress)
    assert Script(redis_client, "producers", "import_withdraw")([job], [token]) == (1 if withdrawn else 0)
    assert text_hash(redis_client, job) == ({} if withdrawn else progress)


# -- import_claim ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stored", "fresh", "after"),
    [
        ({}, "0", {"run": "r2"}),
        ({}, "1", {"run": "r2"}),
        # resuming: the shard keeps the lines it has, under the new run
        (
            {"run": "r1", "line": "40", "offset": "800", "enqueued": "7"},
            "0",
            {"run": "r2", "line": "40", "offset": "800", "enqueued": "7"},
        ),
        # starting over: what the shard had is forgotten
        ({"run": "r1", "line": "40", "offset": "800", "enqueued": "7"}, "1", {"run": "r2"}),
    ],
)
def test_a_run_takes_the_job_s_progress_in_a_shard(
    redis_client: redis.Redis, keys: Keys, stored: dict[str, str], fresh: str, after: dict[str, str]
) -> None:
    progress = keys.shard(3).import_progress("nightly")
    other = keys.shard(2).import_progress("nightly")
    redis_client.hset(other, mapping={"run": "r1", "line": "40"})
    if stored:
        redis_client.hset(progress, mapping=stored)
        redis_client.pexpire(progress, 5000)
    assert Script(redis_client, "producers", "import_claim")([progress], ["r2", TTL, fresh]) == 1
    assert text_hash(redis_client, progress) == after
    assert TTL - 1000 < pttl(redis_client, progress) <= TTL
    assert text_hash(redis_client, other) == {"run": "r1", "line": "40"}  # one shard at a time


# -- import_advance -------------------------------------------------------------------------------
def advance(client: redis.Redis, keys: Keys, token: str, line: int, counts: tuple[int, int, int],
            state: str = "running", ttl: int = TTL) -> object:  # fmt: skip
    return Script(client, "producers", "import_advance")(
        [keys.import_job("nightly")], [token, line, line * 20, *counts, state, ttl]
    )


def test_the_job_advances_with_its_counts_state_and_ttl(redis_client: redis.Redis, keys: Keys) -> None:
    job = keys.import_job("nightly")
    redis_client.hset(job, mapping={**RUNNING, "skipped": "2", "rejected": "1", "source": "users.csv"})
    before = redis_ms(redis_client)
    assert advance(redis_client, keys, "r1", 50, (9, 1, 2)) == 1
    after = redis_ms(redis_client)
    progress = text_hash(redis_client, job)
    assert before <= int(progress.pop("updated_ms")) <= after
    # the position and state are the chunk's; the counts add up; the rest is as it was
    assert progress == {"run": "r1", "line": "50", "offset": "1000", "state": "running", "enqueued": "48",
                        "skipped": "3", "rejected": "3", "format": "csv", "source": "users.csv"}  # fmt: skip
    assert TTL - 1000 < pttl(redis_client, job) <= TTL
    assert advance(redis_client, keys, "r1", 52, (0, 0, 1), state="finished", ttl=2 * TTL) == 1
    progress = text_hash(redis_client, job)
    assert (progress["line"], progress["state"], progress["enqueued"], progress["rejected"]) == (
        "52", "finished", "48", "4"
    )  # fmt: skip
    assert 2 * TTL - 1000 < pttl(redis_client, job) <= 2 * TTL


@pytest.mark.parametrize(
    "stored",
    [
        {"run": "r2", "line": "40", "state": "running"},  # another run took the job over
        {"line": "40", "state": "running"},  # no run (never taken)
        {},  # the job is gone (withdrawn, or expired)
    ],
)
def test_a_run_that_no_longer_owns_the_job_cannot_advance_it(
    redis_client: redis.Redis, keys: Keys, namespace: str, stored: dict[str, str]
) -> None:
    if stored:
        redis_client.hset(keys.import_job("nightly"), mapping=stored)
    before = snapshot(redis_client, namespace)
    with pytest.raises(ImportTaken):
        advance(redis_client, keys, "r1", 50, (9, 1, 2))
    assert snapshot(redis_client, namespace) == before
