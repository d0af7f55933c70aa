"""An import job's compare-and-set scripts (producers/lua/import_take.lua, import_withdraw.lua)
against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.importer.job import JOB_TTL_MS, Action, JobStore
from tests.support import pttl, snapshot, text_hash

TTL = 100_000
RUNNING = {"run": "r1", "line": "40", "state": "running", "offset": "800", "enqueued": "39", "format": "csv"}


@pytest.fixture
def take(redis_client: redis.Redis) -> Script:
    return Script(redis_client, "producers", "import_take")


def test_a_job_with_no_progress_is_started_with_a_fresh_one(
    take: Script, redis_client: redis.Redis, keys: Keys
) -> None:
    job = keys.import_progress("nightly")
    assert take([job], ["", "", "", "start", "r1", TTL, "state", "running", "line", 0, "format", "csv"]) == 1
    assert text_hash(redis_client, job) == {"run": "r1", "state": "running", "line": "0", "format": "csv"}
    assert TTL - 1000 < pttl(redis_client, job) <= TTL


def test_starting_over_replaces_every_field(take: Script, redis_client: redis.Redis, keys: Keys) -> None:
    job = keys.import_progress("nightly")
    redis_client.hset(job, mapping=RUNNING)
    assert take([job], ["r1", "40", "running", "start", "r2", TTL, "state", "running", "line", 0]) == 1
    # nothing of the earlier run is left (its counts, its offset)
    assert text_hash(redis_client, job) == {"run": "r2", "state": "running", "line": "0"}


def test_resuming_takes_the_job_and_keeps_its_progress(take: Script, redis_client: redis.Redis, keys: Keys) -> None:
    job = keys.import_progress("nightly")
    redis_client.hset(job, mapping=RUNNING)
    redis_client.pexpire(job, 5000)
    assert take([job], ["r1", "40", "running", "resume", "r2", TTL]) == 1
    assert text_hash(redis_client, job) == {**RUNNING, "run": "r2"}
    assert TTL - 1000 < pttl(redis_client, job) <= TTL


def test_keeping_a_finished_job_changes_nothing_but_its_ttl(
    take: Script, redis_client: redis.Redis, keys: Keys
) -> None:
    job = keys.import_progress("nightly")
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
    job = keys.import_progress("nightly")
    redis_client.hset(job, mapping=RUNNING)
    before = snapshot(redis_client, namespace)
    for action in ("start", "resume", "keep"):
        assert take([job], [*expected, action, "r2", TTL, "line", 0]) == 0
    assert snapshot(redis_client, namespace) == before


def test_the_job_store_decides_and_takes_atomically(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    current = {"source": "/data/users.csv", "size": "10", "mtime_ns": "5", "format": "csv"}
    decision, stored, token = store.begin("nightly", current, resume=False, restart=False)
    assert (decision.action, stored) == (Action.START, None)
    progress = text_hash(redis_client, keys.import_progress("nightly"))
    assert progress["run"] == token and progress["line"] == "0" and progress["state"] == "running"
    assert {k: progress[k] for k in current} == current
    assert JOB_TTL_MS - 1000 < pttl(redis_client, keys.import_progress("nightly")) <= JOB_TTL_MS
    # a second run resuming it takes it with a new token, from the same position
    redis_client.hset(keys.import_progress("nightly"), "line", 12)
    decision, stored, second = store.begin("nightly", current, resume=True, restart=False)
    assert decision.action is Action.RESUME and stored is not None and stored.line == 12
    assert second != token
    assert text_hash(redis_client, keys.import_progress("nightly"))["run"] == second


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
    job = keys.import_progress("nightly")
    if progress:
        redis_client.hset(job, mapping=progress)
    assert Script(redis_client, "producers", "import_withdraw")([job], [token]) == (1 if withdrawn else 0)
    assert text_hash(redis_client, job) == ({} if withdrawn else progress)
