"""Draining one shard: claim, decide what to send, POST, apply the answer's remedy, release.

One drain task owns one shard at a time (its lease), so one user's records go out in the order
they were enqueued: a batch is sent only after the previous one of the shard was settled, and a
batch that must be retried holds back everything behind it in that shard (other shards go on).

    claim      what the next request can carry (claim.py)
    decide     drop what cannot be decoded or keeps killing the drain (poison); put back behind
               a user's waiting updates what is newer than them (waiting.py); merge (plan.items);
               reserve the hourly budget and defer what it does not allow (budget.py, plan.within)
    send       cut a batch (plan.next_batch), wait for a turn under the rate limit (limiter.py),
               POST it (sink.py), read the answer (outcome.py)
    remedy     what the answer means (remedies.py): settle it (settle.py), and block, lower the
               request size or pause as it says
    release    give the shard back, saying when it next needs a drain (lease.py)

Every decision is a pure function in plan.py or remedies.py; this module does their I/O.  Every
time it decides on is Redis's clock (clock.py).  A batch whose drain keeps dying (the next owner
finds it in flight with no clean release) is sent one record at a time, and if that keeps dying
too, its first record is dead-lettered as `poison`; a drainer that finds its lease lost did not
die, says so, and its claim does not count toward that.  The drain runs for at most
``drain_slice_s`` and then gives the process back to other shards.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from producers.contract import entry
from producers.contract.entry import Entry
from producers.contract.errors import InvalidRecord, StoreError
from worker.deadletter import dead_letter, dead_letter_raw
from worker.drain import plan, waiting
from worker.drain.backoff import retry_delay_s
from worker.drain.budget import BudgetStore
from worker.drain.claim import Claim
from worker.drain.limiter import RateLimiter
from worker.drain.outcome import Outcome, Verdict, classify, classify_error
from worker.drain.plan import Item
from worker.drain.remedies import Pause, Remedy, Rules, remedy
from worker.drain.request_size import request_size_limit
from worker.drain.settle import DeadLetter, Parking, Settlement, inflight_change
from worker.drain.sink import HttpSink, batch_json
from worker.drain.store import ShardStore
from worker.errors import LeaseLost, SinkError, SinkTimeout
from worker.metrics import Metrics
from worker.settings import Settings

log = logging.getLogger("identify_queue.drain")


@dataclass
class Work:
    """What is left of one claim, and how the next batches must be cut."""

    pending: list[Item]
    #: What inflight holds in Redis now, as this drainer last wrote it (a settle changes both).
    inflight: list[bytes]
    max_bytes: int
    #: Caps on the sizes of the next batches, from splitting (400 naming none, 413).
    splits: list[int] = field(default_factory=list)
    #: One record per request: this claim's drain has died before.
    careful: bool = False
    #: This claim probes a blocked sender; its first answer decides whether sending resumes.
    probe: bool = False
    #: Redis's clock at the claim: the budget reserves everything of a claim in the same slot (and
    #: moves what was sent to a later one if the claim ends there: ``Drainer._close_budget``).
    claimed_ms: int = 0
    #: Budget reserved for this claim (slot key, per user), and what was sent and may have been
    #: applied (one item: one identification of its user): the difference is refunded when the
    #: claim is closed.  The items are counted per user only when that is needed (``budget_left``).
    budget_slot: str = ""
    reserved: dict[str, int] = field(default_factory=dict)
    applied: list[Item] = field(default_factory=list)
    #: A merged item was split back: a user may now have more identifications than reserved.
    rebudget: bool = False

    def budget_left(self) -> dict[str, int]:
        if not self.applied:
            return dict(self.reserved)
        applied = Counter([item.entries[0].user_key for item in self.applied])
        return {u: n - applied.get(u, 0) for u, n in self.reserved.items()}

    def all_reserved_applied(self) -> bool:
        """Whether every reserved identification was sent.  Each one sent was reserved for its user
        first (``Drainer._within_budget``), so equal totals mean equal counts for every user."""
        return len(self.applied) == sum(self.reserved.values())


class Drainer:
    def __init__(
        self, settings: Settings, store: ShardStore, sink: HttpSink, *, limiter: RateLimiter,
        budget: BudgetStore | None, metrics: Metrics | None = None, should_stop: Callable[[], bool] = lambda: False,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.sink = sink
        self.limiter = limiter
        self.budget = budget
        self._should_stop = should_stop
        # The body overhead besides the records: `api_key=...&identification=`.
        self._overhead = len(sink.body(b""))
        # Single records refused by a 400 that names none, in a row (across claims).
        self._unnamed_run = 0
        # The request size the last claim said is in force (a 413 lowers it for every worker).
        self._max_bytes = settings.batch_max_bytes
        self.clock = store.clock
        self._max_record_bytes = settings.queue.max_record_bytes

    # -- the loop ---------------------------------------------------------------------------------
    def drain(self, shard: int) -> None:
        try:
            token = self.store.acquire(shard)
        except StoreError as exc:
            log.warning("shard %d: cannot take its lease (%s); it is drained again later", shard, exc)
            return
        if token is None:
            return  # another drainer owns it and will see everything queued there
        try:
            pause, clean = self._drain_owned(shard, token)
        except LeaseLost:
            log.warning("shard %d: lease lost while draining; another drainer takes over", shard)
            try:
                self.store.lost(shard, token)
            except StoreError as exc:
                log.warning("shard %d: cannot report the lost lease (%s)", shard, exc)
            return
        self._release(shard, token, pause, clean)

    def _release(self, shard: int, token: str, pause: Pause | None, clean: bool) -> None:
        """Give the shard back, trying again while Redis is away (a restart, a failover).

        A shard left with its lease would wait out the whole TTL once Redis is back; so the
        release is retried, every second at most, for as long as the lease would have lasted.
        """
        deadline, delay = time.monotonic() + self.settings.lease_ttl_s, 0.1
        while True:
            try:
                if pause is None:
                    self.store.release(shard, token, clean=clean)
                elif pause.retry:
                    self.store.release(shard, token, retry_in_ms=pause.ms, clean=clean)
                else:
                    self.store.release(shard, token, wake_in_ms=pause.ms, clean=clean)
                return
            except StoreError as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("shard %d: cannot release its lease (%s); it expires on its own", shard, exc)
                    return
                log.info("shard %d: cannot release its lease yet (%s); trying again", shard, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _drain_owned(self, shard: int, token: str) -> tuple[Pause | None, bool]:
        """Claim and send until the slice ends or the shard must wait; (the pause, a clean stop)."""
        try:
            deadline = time.monotonic() + self.settings.drain_slice_s
            begin = self.store.begin()
            if begin.wait_ms:
                return Pause(begin.wait_ms, retry=False), True  # blocked: looked at again at the next probe
            self._max_bytes = request_size_limit(
                self.settings.batch_max_bytes, begin.learned_request_bytes, begin.learned_age_ms,
                int(self.settings.request_size_recovery_s * 1000),
            )  # fmt: skip
            probe = begin.probe
            while time.monotonic() < deadline and not self._should_stop():
                claim = self.store.claim(shard, token, self.settings.effective_batch_size, self._max_bytes)
                if claim.wait_ms:
                    return Pause(claim.wait_ms, retry=True), True
                if not claim.entries:
                    return None, True
                pause = self._process(shard, token, claim, probe=probe)
                probe = False
                if pause:
                    return pause, True
            return None, True
        except LeaseLost:
            raise
        except StoreError as exc:
            # Redis failed us, not the records: nothing to count against them
            log.warning("shard %d: %s; its records stay in flight and are read again first", shard, exc)
            return Pause(self._backoff_ms(1), retry=True), True
        except Exception:
            # A bug or an unexpected answer: what was claimed stays in flight, unmarked, so the next
            # claim counts a recovery; repeated, that isolates the record that causes it.
            log.exception("shard %d: drain failed; its records stay in flight and are read again first", shard)
            return Pause(self._backoff_ms(1), retry=True), False

    def _process(self, shard: int, token: str, claim: Claim, *, probe: bool = False) -> Pause | None:
        """Send everything claimed, in order; return a pause if the shard must wait."""
        now = self.clock.now_ms()
        decoded, dead = self._decode(claim.entries, now)
        if claim.recoveries >= self.settings.poison_after + 2 and decoded:
            culprit = decoded.pop(0)
            detail = f"the drain died {claim.recoveries} times with this record first in flight"
            dead.append(dead_letter(culprit, "poison", now, detail=detail))
            log.error("shard %d: dead-lettered a poison record of %s: %s", shard, culprit.user_key, detail)
        behind: list[Parking] = []
        if claim.waiting_users and decoded:
            decoded, behind = self._behind_waiting(shard, decoded, claim.waiting_users)
        work = Work(
            pending=plan.items(
                decoded, merge=self.settings.coalesce, max_record_bytes=self.settings.queue.max_record_bytes
            ),
            inflight=list(claim.entries),
            max_bytes=self._max_bytes,
            careful=claim.recoveries >= self.settings.poison_after,
            probe=probe,
            claimed_ms=claim.now_ms,
        )
        try:
            deferred = self._within_budget(shard, work) if self.budget is not None and work.pending else []
            if dead or behind or deferred:
                self._settle(shard, token, work, Settlement(dead=dead, parked=behind + deferred, failed_ms=now))
            return self._send_all(shard, token, work)
        finally:
            try:
                self._close_budget(shard, work)
            except StoreError as exc:
                # not raised over what ends the claim (a lost lease, say): the budget then counts what
                # was reserved, sent or not, in the slot it was reserved in, erring on the safe side
                log.warning("shard %d: cannot close the claim's budget reservation (%s)", shard, exc)

    def _send_all(self, shard: int, token: str, work: Work) -> Pause | None:
        while work.pending and not self._should_stop():
            if work.rebudget and self.budget is not None:
                deferred = self._within_budget(shard, work)
                if deferred:
                    self._settle(shard, token, work, Settlement(parked=deferred))
                if not work.pending:
                    return None
            batch = plan.next_batch(
                work.pending, careful=work.careful, max_count=self.settings.effective_batch_size,
                max_bytes=work.max_bytes, overhead=self._overhead, splits=work.splits,
                encode=lambda records: self.sink.body(batch_json(records)),
            )  # fmt: skip
            work.splits = batch.splits
            sent = self._send(shard, token, work.pending[: batch.size], batch.body)
            if sent is None:
                return None  # asked to stop while waiting for a turn: the batch stays in flight
            if work.probe:
                work.probe = False
                if sent.verdict is not Verdict.CONFIG_ERROR:
                    self._resume()
            rules = Rules(
                now_ms=self.clock.now_ms(), throttle_pause_s=self.settings.throttle_pause_s,
                retry_max_age_s=self.settings.retry_max_age_s, retry_max_attempts=self.settings.retry_max_attempts,
                retry_base_s=self.settings.retry_base_s, retry_cap_s=self.settings.retry_cap_s,
                unnamed_refusals_before_block=self.settings.unnamed_refusals_before_block,
                unnamed_run=self._unnamed_run, jitter=random.random(),
            )  # fmt: skip
            answer = remedy(sent, work.pending[: batch.size], work.pending[batch.size :], rules,
                            sent_bytes=len(batch.body))  # fmt: skip
            pause = self._apply(shard, token, work, answer, sent)
            if pause:
                return pause
        return None

    def _apply(self, shard: int, token: str, work: Work, r: Remedy, outcome: Outcome) -> Pause | None:
        """Do what a remedy says: count, lower the request size, settle, log, block or pause."""
        self._unnamed_run = r.unnamed_run
        if self.budget is not None:  # what was applied is kept for the budget's refund only
            work.applied += r.applied
        work.pending = r.pending
        work.splits[0:0] = r.splits
        work.rebudget = work.rebudget or r.rebudget
        if r.lower_bytes is not None:
            quiet_ms = int(self.settings.request_size_recovery_s * 1000)
            learned = self.store.lower_max_request_bytes(r.lower_bytes, quiet_ms)
            work.max_bytes = min(work.max_bytes, learned)
            self._max_bytes = min(self._max_bytes, learned)
        if r.settlement.requests:
            r.settlement.status = str(outcome.status) if outcome.status is not None else "no_answer"
        self._settle(shard, token, work, r.settlement, keep=r.keep)
        if r.note:
            log.log(logging.WARNING if r.level == "warning" else logging.INFO, "shard %d: %s", shard, r.note)
        if r.block is not None:
            return self._block(r.block, outcome)
        return r.pause

    def _decode(self, raws: list[bytes], now: int) -> tuple[list[Entry], list[DeadLetter]]:
        try:
            return entry.decode_all(raws), []
        except InvalidRecord:
            pass  # one at a time, to dead-letter exactly the entries that cannot be read
        decoded, dead = [], []
        for raw in raws:
            try:
                decoded.append(entry.decode(raw))
            except InvalidRecord as exc:
                dead.append(dead_letter_raw(raw, now, exc.detail))
                log.error("dead-lettered an undecodable queue entry: %r", raw[:80])
        return decoded, dead

    def _behind_waiting(
        self, shard: int, decoded: list[Entry], waiting_users: int
    ) -> tuple[list[Entry], list[Parking]]:
        """Split a claim into what may go now and what goes back behind older waiting updates.

        An update may be sent only if no older update of its user waits (waiting.py): a user's
        queued updates claimed while it is held or deferred wait behind it; released or retried
        ones, older than all it has waiting, go now; in-flight updates newer than a replayed dead
        letter wait for it.
        """
        users = list(dict.fromkeys([e.user_key for e in decoded]))
        oldest = self.store.oldest_waiting(shard, users, waiting_users)
        if not oldest:
            return decoded, []
        send, back = waiting.split(decoded, oldest)
        # hold 0 and no reason: the user's release time and reason stay as they are
        return send, [Parking(user, 0, "", members) for user, members in back.items()]

    def _within_budget(self, shard: int, work: Work) -> list[Parking]:
        """Make every pending identification covered by reserved budget: reserve what is missing,
        and defer, in order, what the budget does not allow now.

        Run for each claim, and again before a send when splitting a merged item made more
        identifications of a user than were reserved: each one sent is one Amplitude counts.
        """
        assert self.budget is not None
        work.rebudget = False
        missing = plan.shortfall(work.pending, work.budget_left())
        if not missing:
            return []
        keys = self.store.keys.shard(shard)
        # named before the call: a call of several that fails midway leaves reserved what it must close
        work.budget_slot = self.budget.slot_key(keys, work.claimed_ms)
        reservation = self.budget.reserve(keys, missing, work.claimed_ms, work.reserved)
        limited = reservation.limited
        if not limited:
            return []
        work.pending, waits = plan.within(work.pending, work.budget_left(), set(limited))
        limit = self.settings.user_updates_per_hour
        for user, held in waits.items():
            log.info("shard %d: %s is past its budget of %d an hour; %d update(s) wait %.0f s", shard, user, limit,
                     len(plan.raw(held)), limited[user].wait_ms / 1000)  # fmt: skip
        return [Parking(u, limited[u].wait_ms, waiting.DEFERRED, waiting.members(plan.entries_of(held)))
                for u, held in waits.items()]  # fmt: skip

    def _close_budget(self, shard: int, work: Work) -> None:
        """Give back the budget reserved for what was not sent, or surely not applied; and when the
        claim ended in a later slot than it reserved in, count what it sent in that slot."""
        if self.budget is None or not work.reserved or not work.budget_slot:
            return
        latest = self.clock.latest_ms()
        if latest // self.budget.slot_ms != work.claimed_ms // self.budget.slot_ms:
            sent = Counter([item.entries[0].user_key for item in work.applied])
            # the claim's own slot bounds Redis's clock from below, even if that clock went back
            within = (work.claimed_ms, latest)
            self.budget.move(self.store.keys.shard(shard), work.budget_slot, within, work.reserved, sent)
            return
        if work.all_reserved_applied():
            return  # the usual end of a claim: everything reserved was sent, in the slot it went in
        unused = {u: n for u, n in work.budget_left().items() if n > 0}
        if unused:
            self.budget.refund(work.budget_slot, unused)

    def _send(self, shard: int, token: str, batch: list[Item], body: bytes) -> Outcome | None:
        """POST one batch; None if asked to stop while waiting for a turn under the rate limit."""
        # The lease is renewed while waiting: a long wait for a turn must not hand the shard over.
        if not self.limiter.acquire(len(batch), self._should_stop, lambda: self.store.renew(shard, token)):
            return None
        self.store.renew(shard, token)
        started = time.perf_counter()
        try:
            result = self.sink.post(body)
        except SinkError as exc:
            self._observe("timeout" if isinstance(exc, SinkTimeout) else "connection_error", started, len(batch))
            return classify_error(exc)
        self._observe(str(result.status), started, len(batch))
        return classify(result.status, result.headers, result.body, len(batch))

    def _observe(self, status: str, started: float, records: int) -> None:
        if self.metrics is not None:
            self.metrics.request(status, time.perf_counter() - started, records)

    def _settle(
        self, shard: int, token: str, work: Work, settlement: Settlement, keep: list[bytes] | None = None
    ) -> None:
        """Write one settlement; inflight becomes ``keep`` (by default, what is still pending)."""
        desired = plan.raw(work.pending) if keep is None else keep
        settlement.trim, settlement.replace = inflight_change(work.inflight, desired)
        if settlement.dead and not settlement.failed_ms:
            settlement.failed_ms = self.clock.now_ms()
        self.store.settle(shard, token, settlement)
        work.inflight = desired
        if self.metrics is not None:
            self.metrics.settled(settlement)

    def _block(self, reason: str, outcome: Outcome) -> Pause:
        block = self.store.block(
            reason, outcome.excerpt, outcome.status,
            base_s=self.settings.retry_base_s, cap_s=self.settings.probe_cap_s, jitter=random.random(),
        )  # fmt: skip
        if block.newly_blocked:
            log.error(
                "SENDING STOPPED for every worker: %s. No record is dropped: everything stays queued. "
                "Fix the cause (AMPLITUDE_API_KEY, AMPLITUDE_IDENTIFY_URL); workers probe again with "
                "backoff, and a worker restarted with the right settings resumes at once.",
                reason,
            )
        else:
            log.warning("still blocked (%s); probe %d failed, next in %.1f s",
                        reason, block.probes, block.next_probe_in_ms / 1000)  # fmt: skip
        return Pause(max(1, block.next_probe_in_ms), retry=False)

    def _resume(self) -> None:
        # Between a request and its settlement nothing may raise: what was sent would not be
        # counted against the budget (nor settled).  A block that stays is lifted by the next probe.
        try:
            blocked_ms = self.store.unblock()
        except StoreError as exc:
            log.warning("cannot lift the block on sending (%s); the next probe does", exc)
            return
        if blocked_ms >= 0:
            log.warning("sending resumed after %.1f s blocked", blocked_ms / 1000)

    def _backoff_ms(self, attempts: int) -> int:
        return int(retry_delay_s(attempts, self.settings.retry_base_s, self.settings.retry_cap_s) * 1000)
