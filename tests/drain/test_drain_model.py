"""The whole drain against a reference model: holds, budget, retries, merging, crashes and replay together.

A hypothesis state machine drives the real Drainer (real ShardStore, BudgetStore, Lua scripts)
against a real redis-server.  Only Amplitude is scripted: each request gets an answer the test
draws (2xx, 400 naming records, opaque 400, 413, 429 naming users or none, 5xx that was or was not
applied, a timeout, an invalid API key, the drainer's process killed before or after the request
reached Amplitude, the lease lost while the request was out).  And any one call of a drain to
Redis may lose its answer after it ran (a connection dropped then: test_lost_answers.py).  Between
drains the test enqueues, lets holds expire and budget windows pass, ends retry waits, lets a dead
drainer's lease expire, and replays dead letters.

What must hold, checked at every request and after every step:

- the order: no update of a user reaches Amplitude while an older update of that user is still
  pending (queued, in flight, waiting) and not earlier in the same request; a replayed dead letter
  is pending again, so nothing newer of its user that was not yet delivered may overtake it;
- nothing lost: every update is in Redis exactly once (queue, in flight, waiting, dead letters), or
  was in a request Amplitude answered with a 2xx; nothing is sent again once settled;
- the counts: ``total`` equals what is queued, in flight and waiting; dead-letter counts match;
- the limits: no user gets more identifications applied in a budget window than the budget, and
  the budget counts exactly what may have been applied unless a drainer was killed or the answer
  to a reservation was lost (then it counts more: the safe side);
- waiting users: everything of a user that waits is older than all it has in the queue;
- a lost lease is not a crash: recoveries never exceed the kills of that claim.

``IDENTIFY_MODEL_EXAMPLES`` and ``IDENTIFY_MODEL_STEPS`` run it longer than CI does.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from producers.contract.entry import decode
from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import counts_of, total_of
from worker.deadletter import DeadLetterQueue, Selection
from worker.devtools.local_redis import LocalRedis
from worker.drain import waiting
from worker.drain.budget import BudgetStore
from worker.drain.limiter import RateLimiter
from worker.drain.loop import Drainer
from worker.drain.sink import HttpResult
from worker.drain.store import ShardStore
from worker.errors import SinkTimeout
from worker.settings import Secret, Settings

SHARDS = 2
USERS = [f"user-{u}" for u in (0, 1, 2, 4, 5)]  # three in shard 0, two in shard 1
EXAMPLES = int(os.environ.get("IDENTIFY_MODEL_EXAMPLES", "250"))
STEPS = int(os.environ.get("IDENTIFY_MODEL_STEPS", "40"))


class Killed(BaseException):
    """The drainer's process died here (kill -9): nothing of it runs any more."""


class Violation(BaseException):
    """A broken promise seen at a request: a BaseException, so that no handler of the drain hides it."""


@dataclass(frozen=True)
class Answer:
    """How Amplitude answers one request, and whether the request took effect there."""

    kind: str
    applied: bool = False
    pick: int = 0  # which record (or user) a 400 or a 429 names, modulo the batch


ANSWERS = st.one_of(
    st.just(Answer("ok", applied=True)),
    st.builds(Answer, st.just("invalid"), st.just(False), st.integers(0, 7)),
    st.just(Answer("opaque_400")),
    st.just(Answer("too_large")),
    st.builds(Answer, st.just("throttle_user"), st.just(False), st.integers(0, 7)),
    st.just(Answer("throttle_all")),
    st.just(Answer("unavailable")),
    st.builds(Answer, st.just("server_error"), st.booleans()),
    st.builds(Answer, st.just("timeout"), st.booleans()),
    st.builds(Answer, st.just("kill"), st.booleans()),
    st.just(Answer("lose_lease", applied=True)),
    st.just(Answer("bad_key")),
)


#: What time can bring between two steps (drawn on its own, or just before a drain).
WAITS = [None, "holds end", "budget window passes", "retry time comes", "leases expire"]


@dataclass
class Model:
    """What the test knows independently of the code under test."""

    enqueued: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Updates that were in a request Amplitude answered with a 2xx.
    confirmed: set[tuple[str, int]] = field(default_factory=set)
    #: Identifications per user applied, or maybe applied, since the budget window last passed.
    applied_in_window: Counter[str] = field(default_factory=Counter)
    maybe_applied_in_window: Counter[str] = field(default_factory=Counter)
    killed_in_window: bool = False
    #: Kills since each shard's in-flight claim was made (a lost lease is not one).
    kills: Counter[int] = field(default_factory=Counter)


def record(user: str, n: int) -> dict[str, Any]:
    # `r<n>` survives merging ($set of different properties merges into one), so the test can read
    # which updates a merged identification carries.
    return {"user_id": user, "user_properties": {"$set": {"n": n, f"r{n}": 1}}}


def updates_of(identification: dict[str, Any]) -> list[int]:
    props = identification["user_properties"]["$set"]
    ns = sorted(int(k[1:]) for k in props if k.startswith("r"))
    assert props["n"] == ns[-1], f"a merged identification must end with its newest update: {identification}"
    return ns


class Snapshot:
    """Where every update is in Redis now."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.queued: dict[str, list[int]] = defaultdict(list)
        self.inflight: dict[str, list[int]] = defaultdict(list)
        self.waiting: dict[str, list[int]] = defaultdict(list)
        self.dead: list[tuple[str, int, str]] = []
        self.inflight_by_shard: dict[int, int] = {}
        for shard in range(SHARDS):
            k = keys.shard(shard)
            for raw in client.lrange(k.queue, 0, -1):
                self._add(self.queued, raw)
            inflight = client.lrange(k.inflight, 0, -1)
            self.inflight_by_shard[shard] = len(inflight)
            for raw in inflight:
                self._add(self.inflight, raw)
            for member in client.zrange(k.waiting, 0, -1):
                user_len, rest = member.split(b":", 1)
                user = rest[: int(user_len)].decode()
                self._add(self.waiting, waiting.entry_of(member, user))
        for doc in (d for s in range(SHARDS) for d in client.hvals(keys.shard(s).dlq_entries)):
            d = orjson.loads(doc)
            self.dead.append((d["record"]["user_id"], d["record"]["user_properties"]["$set"]["n"], d["reason"]))

    @staticmethod
    def _add(into: dict[str, list[int]], raw: bytes) -> None:
        data = orjson.loads(decode(raw).data)
        into[data["user_id"]].append(data["user_properties"]["$set"]["n"])

    def pending(self, user: str) -> list[int]:
        return self.queued[user] + self.inflight[user] + self.waiting[user]

    def everywhere(self) -> Counter[tuple[str, int]]:
        places: Counter[tuple[str, int]] = Counter()
        for where in (self.queued, self.inflight, self.waiting):
            for user, ns in where.items():
                places.update((user, n) for n in ns)
        places.update((user, n) for user, n, _ in self.dead)
        return places


class Process:
    """One worker process: dead once killed, and then nothing of it touches Redis again."""

    def __init__(self) -> None:
        self.dead = False
        #: Run before the next lease renewal (the one before a request): a stall that outlasts the lease.
        self.before_renew: Callable[[], None] | None = None
        #: The call to Redis, counted from 1, that runs and then loses its answer (None: none).
        self.lose_answer_of: int | None = None
        self.calls = 0
        #: The calls whose answer was lost.
        self.lost: list[str] = []

    def guard(self, target: Any) -> Any:
        process = self

        class Guarded:
            def __getattr__(self, name: str) -> Any:
                value = getattr(target, name)
                if not callable(value):
                    return value

                def call(*args: Any, **kwargs: Any) -> Any:
                    if process.dead:
                        raise Killed
                    if name == "renew" and process.before_renew is not None:
                        stall, process.before_renew = process.before_renew, None
                        stall()
                    result = value(*args, **kwargs)
                    process.calls += 1
                    if process.calls == process.lose_answer_of:
                        process.lost.append(name)
                        raise StoreError(f"{name}: the answer was lost with its connection")
                    return result

                return call

        return Guarded()


class ScriptedAmplitude:
    """The sink: answers each request as the test scripted, and checks order as requests arrive."""

    def __init__(self, machine: DrainMachine) -> None:
        self.machine = machine
        self.answers: list[Answer] = []

    def body(self, identification: bytes) -> bytes:
        return identification

    def post(self, body: bytes) -> HttpResult:
        m = self.machine
        batch = orjson.loads(body)
        answer = self.answers.pop(0) if self.answers else Answer("ok", applied=True)
        m.check_request(batch)
        if answer.applied:
            for identification in batch:
                m.model.applied_in_window[identification["user_id"]] += 1
        if answer.kind in ("ok", "server_error", "timeout", "unavailable", "lose_lease") or (
            answer.kind == "kill" and answer.applied
        ):
            for identification in batch:
                m.model.maybe_applied_in_window[identification["user_id"]] += 1
        if answer.kind == "kill":
            m.process.dead = True
            m.model.killed_in_window = True
            raise Killed
        if answer.kind == "lose_lease":
            # the request took longer than the lease: it expired, and nobody has taken it yet
            m.leases_expire()
        if answer.kind in ("ok", "lose_lease"):
            for identification in batch:
                m.model.confirmed.update((identification["user_id"], n) for n in updates_of(identification))
            return HttpResult(200, {}, b'{"code":200}')
        if answer.kind == "timeout":
            raise SinkTimeout("scripted timeout")
        return self._refusal(answer, batch)

    @staticmethod
    def _refusal(answer: Answer, batch: list[dict[str, Any]]) -> HttpResult:
        pick = answer.pick % len(batch)
        doc: dict[str, Any]
        status = {"invalid": 400, "opaque_400": 400, "bad_key": 400, "too_large": 413, "throttle_user": 429,
                  "throttle_all": 429, "unavailable": 503, "server_error": 500}[answer.kind]  # fmt: skip
        if answer.kind == "invalid":
            doc = {"code": 400, "error": "invalid", "events_with_invalid_fields": {"user_id": [pick]}}
        elif answer.kind == "bad_key":
            doc = {"code": 400, "error": "Invalid API key: ***"}
        elif answer.kind == "throttle_user":
            doc = {"code": 429, "throttled_users": {batch[pick]["user_id"]: 30}}
        else:
            doc = {"code": status, "error": answer.kind}
        return HttpResult(status, {}, orjson.dumps(doc))


class DrainMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(self.redis_url)
        self.config = QueueConfig(redis_url=self.redis_url, namespace=f"m-{secrets.token_hex(4)}", shards=SHARDS)
        self.keys = Keys(self.config.namespace)
        self.model = Model()
        self.producer = IdentifyProducer(self.config, client=self.client)
        self.sink = ScriptedAmplitude(self)
        self.process = Process()
        self.drainer: Drainer | None = None

    @initialize(batch_size=st.integers(1, 5), coalesce=st.booleans(), budget=st.sampled_from([0, 2, 3, 6]))
    def configure(self, batch_size: int, coalesce: bool, budget: int) -> None:
        self.settings = Settings(
            queue=self.config, api_key=Secret("model-key"), identify_url="http://amplitude.invalid/identify",
            batch_size=batch_size, coalesce=coalesce, user_updates_per_hour=budget, budget_window_s=3600,
            throttle_pause_s=3600, retry_max_attempts=4, poison_after=2, unnamed_refusals_before_block=3,
            drain_slice_s=5, lease_ttl_s=60,
            # every wait is long, so that only the test's rules end one: the same steps, the same run
            retry_base_s=3600, retry_cap_s=7200, probe_cap_s=7200,
        )  # fmt: skip
        self.budget_limit = budget
        self.new_process()

    def new_process(self) -> None:
        self.process = Process()
        store = ShardStore(self.client, self.keys, self.settings.lease_ttl_s)
        budget = BudgetStore(self.client, self.budget_limit, 3600) if self.budget_limit else None
        limiter = RateLimiter(self.client, self.keys, requests_per_s=None, records_per_s=None, max_batch=5)
        self.drainer = Drainer(
            self.settings, self.process.guard(store), self.sink,  # type: ignore[arg-type]
            limiter=limiter, budget=self.process.guard(budget) if budget else None,
        )  # fmt: skip

    def teardown(self) -> None:
        keys = list(self.client.scan_iter(f"{self.config.namespace}:*"))
        if keys:
            self.client.delete(*keys)
        self.client.close()

    # -- what producers, time and operators do ------------------------------------------------------
    @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=8))
    def enqueue(self, users: list[str]) -> None:
        """One producer call: updates of a few users, interleaved as services send them."""
        records = []
        for user in users:
            n = len(self.model.enqueued[user])
            self.model.enqueued[user].append(n)
            records.append(record(user, n))
        self.producer.identify_many(records)

    @rule(
        first=st.integers(0, SHARDS - 1), answers=st.lists(ANSWERS, max_size=6), wait=st.sampled_from(WAITS),
        stall=st.sampled_from([False, False, False, True]),
    )  # fmt: skip
    def drain(self, first: int, answers: list[Answer], wait: str | None, stall: bool) -> None:
        """A drain task for each shard in turn, Amplitude answering as scripted, then 2xx.

        ``stall``: the drainer stalls past its lease before its first request (a VM pause).
        """
        if wait:
            self.time_passes(wait)
        if stall:
            self.process.before_renew = self.leases_expire
        self.process.calls, self.process.lost = 0, []
        self.sink.answers = list(answers)
        for shard in (first, 1 - first):
            assert self.drainer is not None
            try:
                self.drainer.drain(shard)
            except Killed:
                self.model.kills[shard] += 1
                self.new_process()  # the worker restarts; the dead one's lease stays until it expires
            except Violation as seen:
                raise AssertionError(str(seen)) from None  # reported, and shrunk, by hypothesis
        self.sink.answers = []
        self.process.lose_answer_of = None
        if "reserve" in self.process.lost:
            self.model.killed_in_window = True  # a reservation the drainer never learned of: counted more

    @rule(call=st.integers(1, 8))
    def an_answer_gets_lost(self, call: int) -> None:
        """In the next drain step, its ``call``-th call to Redis runs and then loses its answer (a
        connection dropped then), as the drain's client reports it: a StoreError."""
        self.process.lose_answer_of = call

    @rule(what=st.sampled_from([w for w in WAITS if w]))
    def time_passes(self, what: str) -> None:
        """Redis's clock is real; the test moves what depends on it by rewriting the times."""
        if what == "holds end":
            for shard in range(SHARDS):
                parked = self.keys.shard(shard).parked
                users = self.client.zrange(parked, 0, -1)
                if users:
                    self.client.zadd(parked, dict.fromkeys(users, 0))
        elif what == "budget window passes":
            for key in self.client.scan_iter(f"{self.config.namespace}:{{s*}}:budget:*"):
                self.client.delete(key)
            self.model.applied_in_window.clear()
            self.model.maybe_applied_in_window.clear()
            self.model.killed_in_window = False
        elif what == "retry time comes":
            for shard in range(SHARDS):
                self.client.hdel(self.keys.shard(shard).state, "retry_at")
            if self.client.exists(self.keys.blocked):
                self.client.hset(self.keys.blocked, "next_probe_ms", 0)
        else:  # a dead drainer's lease expires
            self.leases_expire()

    def leases_expire(self) -> None:
        self.client.delete(*[self.keys.shard(s).lease for s in range(SHARDS)])

    @precondition(lambda self: any(self.client.hlen(self.keys.shard(s).dlq_entries) for s in range(SHARDS)))
    @rule(reason=st.sampled_from([None, "invalid", "expired", "too_large", "poison"]))
    def replay(self, reason: str | None) -> None:
        DeadLetterQueue(self.config, client=self.client).replay(Selection(reason=reason))

    # -- checks ---------------------------------------------------------------------------------------
    def check_request(self, batch: list[dict[str, Any]]) -> None:
        """At a request: nothing overtakes an older pending update of its user; nothing settled is resent."""
        snap = Snapshot(self.client, self.keys)
        earlier: dict[str, set[int]] = defaultdict(set)
        for identification in batch:
            user = identification["user_id"]
            pending = set(snap.pending(user))
            for n in updates_of(identification):
                if n not in pending:
                    self.fail(f"{user} update {n} sent again after it was settled (pending: {sorted(pending)})")
                for older in sorted(pending - earlier[user]):
                    if older < n:
                        self.fail(f"{user} update {n} overtook update {older} (pending {sorted(pending)})")
                earlier[user].add(n)

    def fail(self, message: str) -> None:
        raise Violation(message)

    @invariant()
    def nothing_lost_or_doubled(self) -> None:
        snap = Snapshot(self.client, self.keys)
        places = snap.everywhere()
        for user, ns in self.model.enqueued.items():
            for n in ns:
                count = places[(user, n)]
                assert count <= 1, f"{user} update {n} is in Redis {count} times"
                if count == 0:
                    assert (user, n) in self.model.confirmed, f"{user} update {n} was lost"
        queued = sum(len(ns) for where in (snap.queued, snap.inflight, snap.waiting) for ns in where.values())
        assert total_of(self.client, self.keys, SHARDS) == queued, "the total counter drifted"
        counts = counts_of(self.client, self.keys, SHARDS, "dlq_counts")
        assert counts == dict(Counter(reason for _, _, reason in snap.dead)), "dead-letter counts drifted"
        assert sum(self.client.zcard(self.keys.shard(s).dlq_index) for s in range(SHARDS)) == len(snap.dead)

    @invariant()
    def waiting_updates_are_older_than_queued_ones(self) -> None:
        snap = Snapshot(self.client, self.keys)
        for user, ns in snap.waiting.items():
            assert ns == sorted(ns), f"{user} waits out of order: {ns}"
            if snap.queued[user]:
                assert max(ns) < min(snap.queued[user]), f"{user} waits with {ns} behind queued {snap.queued[user]}"

    @invariant()
    def the_budget_holds(self) -> None:
        if not self.budget_limit:
            return
        counted: Counter[str] = Counter()
        for key in self.client.scan_iter(f"{self.config.namespace}:{{s*}}:budget:*"):
            for user, n in self.client.hgetall(key).items():
                counted[user.decode().removeprefix("u:")] += int(n)
        for user in USERS:
            applied = self.model.applied_in_window[user]
            assert applied <= self.budget_limit, f"{user} had {applied} identifications applied in one window"
            if not self.model.killed_in_window:
                expected = self.model.maybe_applied_in_window[user]
                assert counted[user] == expected, f"budget of {user} counts {counted[user]}, sent {expected}"

    @invariant()
    def a_lost_lease_is_not_a_crash(self) -> None:
        snap = Snapshot(self.client, self.keys)
        for shard in range(SHARDS):
            if snap.inflight_by_shard[shard] == 0:
                self.model.kills[shard] = 0
            recoveries = int(self.client.hget(self.keys.shard(shard).state, "recoveries") or 0)
            kills = self.model.kills[shard]
            assert recoveries <= kills, f"shard {shard}: {recoveries} recoveries counted, {kills} kills"


@pytest.fixture
def model_redis(redis_server: LocalRedis) -> str:
    return redis_server.url


@pytest.mark.timeout(600)
def test_the_drain_keeps_order_and_loses_nothing_under_every_fault(model_redis: str) -> None:
    DrainMachine.redis_url = model_redis
    run_state_machine_as_test(
        DrainMachine,
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )  # fmt: skip
