"""Draining one shard: claim records, cut batches, POST them, and give every answer its remedy.

One drain task owns one shard at a time (its lease), so one user's records go out in the order
they were enqueued: a batch is sent only after the previous one of the shard was settled, and a
batch that must be retried holds back everything behind it in that shard (other shards go on).

    accepted          acknowledge; go on with the rest
    invalid records   dead-letter exactly those; resend the others at once
    400 naming none   split the batch in halves until the bad records stand alone; dead-letter them
                      (one bad record in 1,000 costs about 2 log2(1000) = 20 extra requests)
    too large (413)   split the batch and lower the request size every worker uses from then on;
                      a single record still too large is dead-lettered as `too_large`
    config error      stop every worker sending (a `blocked` reason in status), keep every record,
                      probe with backoff, resume on the first answer that is not a config error
    retry (5xx ...)   the shard backs off (capped, jittered); records past the maximum age or
                      number of attempts are dead-lettered as `expired`
    throttled (429)   the users it names (or, naming none, every user of the batch) are held for
                      the pause Amplitude asks for; their later records wait behind them, in order;
                      everybody else's are resent at once

A claim holds only what may be sent now: updates of users that wait (held, deferred) stay behind
them (worker/waiting.py keeps each user's order).  Before sending, one user's consecutive updates
are merged when that is exact (worker/coalesce.py); updates past a user's hourly budget are
deferred (worker/budget.py); and every request waits for its turn under the global rate limit
(worker/ratelimit.py).  Every time the drain decides on is Redis's clock (shard_store.RedisClock).

A batch whose drain keeps dying (the next owner finds it in flight with no clean release) is sent
one record at a time, and if that keeps dying too, its first record is dead-lettered as `poison`.
A drainer that finds its lease lost (it stalled past the lease) did not die: it says so, and its
claim does not count toward that.
The drain runs for at most ``drain_slice_s`` and then gives the process back to other shards.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from producers import entry
from producers.entry import Entry
from producers.errors import InvalidRecord, LeaseLost, SinkError, SinkTimeout, StoreError
from producers.record import compact_json
from worker import batcher, waiting
from worker.backoff import retry_delay_s
from worker.budget import BudgetStore
from worker.coalesce import coalesce
from worker.deadletter import dead_letter, dead_letter_raw
from worker.metrics import Metrics
from worker.outcome import Outcome, Verdict, classify, classify_error
from worker.ratelimit import RateLimiter
from worker.settings import Settings
from worker.shard_store import Claim, DeadLetter, Parking, Settlement, ShardStore, inflight_change
from worker.sink import HttpSink, batch_json

log = logging.getLogger("identify_queue.drain")


class Pause(NamedTuple):
    """How long the shard waits before its next drain; ``retry`` when its own batch failed."""

    ms: int
    retry: bool


class Item(NamedTuple):
    """One identification of a request, and the queue entries it carries (several when merged)."""

    data: bytes
    entries: tuple[Entry, ...]

    @property
    def user_key(self) -> str:
        return self.entries[0].user_key


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
    #: Redis's clock at the claim: the budget counts everything of a claim in the same slot.
    claimed_ms: int = 0
    #: Budget reserved for this claim (slot key, per user), and what was sent and may have been
    #: applied: the difference is refunded when the claim is done.
    budget_slot: str = ""
    reserved: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    #: A merged item was split back: a user may now have more identifications than reserved.
    rebudget: bool = False


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

    # -- the loop ---------------------------------------------------------------------------------
    def drain(self, shard: int) -> None:
        token = self.store.acquire(shard)
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
        try:
            if pause is None:
                self.store.release(shard, token, clean=clean)
            elif pause.retry:
                self.store.release(shard, token, retry_in_ms=pause.ms, clean=clean)
            else:
                self.store.release(shard, token, wake_in_ms=pause.ms, clean=clean)
        except StoreError as exc:
            log.warning("shard %d: cannot release its lease (%s); it expires on its own", shard, exc)

    def _drain_owned(self, shard: int, token: str) -> tuple[Pause | None, bool]:
        """Claim and send until the slice ends or the shard must wait; (the pause, a clean stop)."""
        try:
            deadline = time.monotonic() + self.settings.drain_slice_s
            while time.monotonic() < deadline and not self._should_stop():
                claim = self.store.claim(shard, token, self.settings.effective_batch_size, self._max_bytes)
                self._max_bytes = batcher.request_size_limit(
                    self.settings.batch_max_bytes, claim.learned_request_bytes, claim.learned_age_ms,
                    int(self.settings.request_size_recovery_s * 1000),
                )  # fmt: skip
                if claim.wait_ms:
                    return Pause(claim.wait_ms, retry=claim.wait_is_retry), True
                if not claim.entries:
                    return None, True
                pause = self._process(shard, token, claim)
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

    def _process(self, shard: int, token: str, claim: Claim) -> Pause | None:
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
            decoded, behind = self._behind_waiting(shard, decoded)
        work = Work(
            pending=self._items(decoded),
            inflight=list(claim.entries),
            max_bytes=self._max_bytes,
            careful=claim.recoveries >= self.settings.poison_after,
            probe=claim.probe,
            claimed_ms=claim.now_ms,
        )
        try:
            deferred: list[Parking] = []
            if self.budget is not None and work.pending:
                deferred = self._within_budget(shard, work)
            if dead or behind or deferred:
                self._settle(shard, token, work, Settlement(dead=dead, parked=behind + deferred, failed_ms=now))
            return self._send_all(shard, token, work)
        finally:
            self._refund(work)

    def _send_all(self, shard: int, token: str, work: Work) -> Pause | None:
        while work.pending and not self._should_stop():
            if work.rebudget and self.budget is not None:
                deferred = self._within_budget(shard, work)
                if deferred:
                    self._settle(shard, token, work, Settlement(parked=deferred))
                if not work.pending:
                    return None
            n, body = self._next_batch(work)
            batch = work.pending[:n]
            sent = self._send(shard, token, batch, body)
            if sent is None:
                return None  # asked to stop while waiting for a turn: the batch stays in flight
            outcome, sent_bytes = sent
            if work.probe:
                work.probe = False
                if outcome.verdict is not Verdict.CONFIG_ERROR:
                    self._resume()
            pause = self._remedy(shard, token, work, batch, outcome, sent=sent_bytes)
            if pause:
                return pause
        return None

    def _decode(self, raws: list[bytes], now: int) -> tuple[list[Entry], list[DeadLetter]]:
        decoded, dead = [], []
        for raw in raws:
            try:
                decoded.append(entry.decode(raw))
            except InvalidRecord as exc:
                dead.append(dead_letter_raw(raw, now, exc.detail))
                log.error("dead-lettered an undecodable queue entry: %r", raw[:80])
        return decoded, dead

    def _behind_waiting(self, shard: int, decoded: list[Entry]) -> tuple[list[Entry], list[Parking]]:
        """Split a claim into what may go now and what goes back behind older waiting updates.

        An update may be sent only if no older update of its user waits (worker/waiting.py):
        a user's queued updates claimed while it is held or deferred wait behind it; released or
        retried ones, older than all it has waiting, go now; in-flight updates newer than a
        replayed dead letter wait for it.
        """
        users = list(dict.fromkeys(e.user_key for e in decoded))
        oldest = self.store.oldest_waiting(shard, users)
        if not oldest:
            return decoded, []
        send, back = waiting.split(decoded, oldest)
        # hold 0 and no reason: the user's release time and reason stay as they are
        return send, [Parking(user, 0, "", members) for user, members in back.items()]

    def _items(self, decoded: list[Entry]) -> list[Item]:
        """One item per entry, or, merging, one per run of a user's updates that merge exactly."""
        if not self.settings.coalesce:
            return [Item(e.data, (e,)) for e in decoded]
        by_user: dict[str, list[Entry]] = {}
        for e in decoded:
            by_user.setdefault(e.user_key, []).append(e)
        items: list[Item] = []
        for entries in by_user.values():
            if len(entries) == 1:
                items.append(Item(entries[0].data, (entries[0],)))
                continue
            try:
                records = [orjson.loads(e.data) for e in entries]
            except orjson.JSONDecodeError:
                items += [Item(e.data, (e,)) for e in entries]  # not ours to judge here: sent as is
                continue
            start = 0
            for record, count in coalesce(records, self.settings.queue.max_record_bytes):
                covered = tuple(entries[start : start + count])
                data = covered[0].data if count == 1 else compact_json(record)
                items.append(Item(data, covered))
                start += count
        return items

    def _within_budget(self, shard: int, work: Work) -> list[Parking]:
        """Make every pending identification covered by reserved budget: reserve what is missing,
        and defer, in order, what the budget does not allow now.

        Run for each claim, and again before a send when splitting a merged item made more
        identifications of a user than were reserved: each one sent is one Amplitude counts.
        """
        assert self.budget is not None
        work.rebudget = False
        counts = Counter(item.user_key for item in work.pending)
        missing = {u: c - have for u, c in counts.items() if c > (have := _budget_left(work, u))}
        if not missing:
            return []
        reservation = self.budget.reserve(self.store.keys.shard(shard), missing, work.claimed_ms, work.reserved)
        work.budget_slot = reservation.slot_key
        limited = reservation.limited
        if not limited:
            return []
        keep: list[Item] = []
        deferred: dict[str, list[bytes]] = {}
        left: dict[str, int] = {}
        for item in work.pending:
            user = item.user_key
            if user not in limited:
                keep.append(item)
                continue
            may = left.setdefault(user, _budget_left(work, user))
            if may > 0 and user not in deferred:
                left[user] = may - 1
                keep.append(item)
            else:
                deferred.setdefault(user, []).extend(waiting.members(item.entries))
        work.pending = keep
        for user, members in deferred.items():
            log.info("shard %d: %s is past its budget of %d an hour; %d update(s) wait %.0f s", shard, user,
                     self.settings.user_updates_per_hour, len(members), limited[user].wait_ms / 1000)  # fmt: skip
        return [Parking(u, limited[u].wait_ms, waiting.DEFERRED, members) for u, members in deferred.items()]

    def _refund(self, work: Work) -> None:
        """Give back the budget reserved for what was not sent, or surely not applied."""
        if self.budget is None or not work.reserved or not work.budget_slot:
            return
        unused = {u: n - work.applied.get(u, 0) for u, n in work.reserved.items() if n > work.applied.get(u, 0)}
        if unused:
            self.budget.refund(work.budget_slot, unused)

    @staticmethod
    def _count_applied(work: Work, batch: list[Item]) -> None:
        for item in batch:
            work.applied[item.user_key] = work.applied.get(item.user_key, 0) + 1

    def _next_batch(self, work: Work) -> tuple[int, bytes]:
        """How many pending items the next request holds, and its encoded body."""
        if work.careful:
            return 1, self._body(work.pending[:1])
        budget = work.max_bytes - self._overhead
        n = batcher.take([len(i.data) for i in work.pending], self.settings.effective_batch_size, budget)
        cap = work.splits.pop(0) if work.splits else None
        if cap is not None:
            n = min(n, cap)
        body = self._body(work.pending[:n])
        # Cut by the records' JSON; escaping can grow the body (non-ASCII bytes take three), so the
        # encoded size has the last word.
        while len(body) > work.max_bytes and n > 1:
            n = max(1, min(n - 1, n * work.max_bytes // len(body)))
            body = self._body(work.pending[:n])
        if cap is not None and n < cap:
            work.splits.insert(0, cap - n)  # the rest of that part still goes out on its own
        return n, body

    def _body(self, items: list[Item]) -> bytes:
        return self.sink.body(batch_json([i.data for i in items]))

    def _send(self, shard: int, token: str, batch: list[Item], body: bytes) -> tuple[Outcome, int] | None:
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
            return classify_error(exc), len(body)
        self._observe(str(result.status), started, len(batch))
        return classify(result.status, result.headers, result.body, len(batch)), len(body)

    def _observe(self, status: str, started: float, records: int) -> None:
        if self.metrics is not None:
            self.metrics.request(status, time.perf_counter() - started, records)

    def _settle(
        self, shard: int, token: str, work: Work, settlement: Settlement, keep: list[bytes] | None = None
    ) -> None:
        """Write one settlement; inflight becomes ``keep`` (by default, what is still pending)."""
        desired = _raw(work.pending) if keep is None else keep
        settlement.trim, settlement.replace = inflight_change(work.inflight, desired)
        if settlement.dead and not settlement.failed_ms:
            settlement.failed_ms = self.clock.now_ms()
        self.store.settle(shard, token, settlement)
        work.inflight = desired
        if self.metrics is not None:
            self.metrics.settled(settlement)

    # -- remedies ---------------------------------------------------------------------------------
    def _remedy(
        self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome, *, sent: int
    ) -> Pause | None:
        verdict = outcome.verdict
        if verdict is Verdict.ACCEPTED:
            self._accepted(shard, token, work, batch)
            return None
        if verdict is Verdict.THROTTLED:
            self._throttled(shard, token, work, batch, outcome)
            return None
        if verdict is Verdict.INVALID:
            self._invalid(shard, token, work, batch, outcome)
            return None
        if verdict is Verdict.UNNAMED_INVALID:
            return self._unnamed_invalid(shard, token, work, batch, outcome)
        if verdict is Verdict.TOO_LARGE:
            self._too_large(shard, token, work, batch, outcome, sent=sent)
            return None
        if verdict is Verdict.CONFIG_ERROR:
            return self._config_error(shard, token, work, outcome)
        return self._retry_later(shard, token, work, batch, outcome)

    def _accepted(self, shard: int, token: str, work: Work, batch: list[Item]) -> None:
        self._unnamed_run = 0
        self._count_applied(work, batch)
        work.pending = work.pending[len(batch) :]
        delivered = sum(len(i.entries) for i in batch)
        self._settle(shard, token, work, Settlement(delivered=delivered, requests=1))

    def _throttled(self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome) -> None:
        """Hold the users Amplitude throttles (all of the batch's if it names none); resend the rest."""
        held = throttled_users(outcome, batch)
        pause_ms = int(max(self.settings.throttle_pause_s, outcome.retry_after_s or 0) * 1000)
        waits: dict[str, list[bytes]] = {}
        others: list[Item] = []
        for item in work.pending:
            if item.user_key in held:
                waits.setdefault(item.user_key, []).extend(waiting.members(item.entries))
            else:
                others.append(item)
        work.pending = others
        parked = [Parking(user, pause_ms, waiting.HELD, members) for user, members in waits.items()]
        error = f"HTTP 429: {len(held)} user(s) held for {pause_ms / 1000:g} s"
        self._settle(shard, token, work, Settlement(requests=1, parked=parked, error=error))
        log.info("shard %d: %s; %d other record(s) go on", shard, error, len(work.inflight))

    def _invalid(self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome) -> None:
        now = self.clock.now_ms()
        dead: list[DeadLetter] = []
        resend: list[Item] = []
        for i, item in enumerate(batch):
            if i not in outcome.invalid:
                resend.append(item)
            elif len(item.entries) > 1:
                resend += _unmerge(item)  # each update may be fine on its own; in place, in order
                work.rebudget = True
            else:
                dead.append(dead_letter(item.entries[0], "invalid", now, detail=outcome.invalid[i],
                                        status=outcome.status, response=outcome.excerpt))  # fmt: skip
        work.pending = resend + work.pending[len(batch) :]
        split = sum(1 for i in outcome.invalid if len(batch[i].entries) > 1)
        error = f"{len(dead)} record(s) refused as invalid: {outcome.detail}"
        if split:
            error += f"; {split} merged identification(s) refused, split back into their updates"
        self._settle(shard, token, work, Settlement(requests=1, dead=dead, failed_ms=now, error=error))
        log.warning("shard %d: %s; resending %d", shard, error, len(resend))

    def _unnamed_invalid(self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome) -> Pause | None:
        if len(batch) > 1:
            half = (len(batch) + 1) // 2
            work.splits[0:0] = [half, len(batch) - half]
            self._settle(shard, token, work, Settlement(requests=1, error=outcome.detail))
            return None
        if len(batch[0].entries) > 1:
            work.pending = _unmerge(batch[0]) + work.pending[1:]
            work.rebudget = True
            self._settle(shard, token, work, Settlement(requests=1, error=outcome.detail))
            return None
        self._unnamed_run += 1
        now = self.clock.now_ms()
        detail = "refused by a 400 that names no record; isolated by splitting its batch"
        dead = [dead_letter(e, "invalid", now, detail=detail, status=400, response=outcome.excerpt)
                for e in batch[0].entries]  # fmt: skip
        work.pending = work.pending[1:]
        self._settle(shard, token, work, Settlement(requests=1, dead=dead, failed_ms=now, error=detail))
        if self._unnamed_run >= self.settings.unnamed_refusals_before_block:
            # Record after record refused, and none accepted: the request itself is at fault.
            self._unnamed_run = 0
            reason = f"{self.settings.unnamed_refusals_before_block} records in a row refused by a 400 naming none"
            return self._block(reason, outcome)
        return None

    def _too_large(self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome, *, sent: int) -> None:
        quiet_ms = int(self.settings.request_size_recovery_s * 1000)
        learned = self.store.lower_max_request_bytes(max(sent // 2, batcher.MIN_LEARNED_BYTES), quiet_ms)
        work.max_bytes = min(work.max_bytes, learned)
        self._max_bytes = min(self._max_bytes, learned)
        if len(batch) > 1:
            half = (len(batch) + 1) // 2
            work.splits[0:0] = [half, len(batch) - half]
            error = f"413 for a {sent}-byte request; requests are now at most {work.max_bytes} bytes"
            self._settle(shard, token, work, Settlement(requests=1, error=error))
            return
        if len(batch[0].entries) > 1:
            work.pending = _unmerge(batch[0]) + work.pending[1:]
            work.rebudget = True
            self._settle(shard, token, work, Settlement(requests=1, error=outcome.detail))
            return
        now = self.clock.now_ms()
        detail = f"a {sent}-byte request holding only this record was refused with 413"
        dead = [dead_letter(e, "too_large", now, detail=detail, status=413, response=outcome.excerpt)
                for e in batch[0].entries]  # fmt: skip
        work.pending = work.pending[1:]
        self._settle(shard, token, work, Settlement(requests=1, dead=dead, failed_ms=now, error=detail))

    def _config_error(self, shard: int, token: str, work: Work, outcome: Outcome) -> Pause:
        # Not the records' fault: keep them all, unchanged, and stop every worker sending.
        self._settle(shard, token, work, Settlement(requests=1, error=outcome.detail))
        return self._block(outcome.detail, outcome)

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
        blocked_ms = self.store.unblock()
        if blocked_ms >= 0:
            log.warning("sending resumed after %.1f s blocked", blocked_ms / 1000)

    def _retry_later(self, shard: int, token: str, work: Work, batch: list[Item], outcome: Outcome) -> Pause:
        # A 5xx or a lost answer may have been applied: it stays counted against the budget.
        self._count_applied(work, batch)
        now = self.clock.now_ms()
        max_age_ms = self.settings.retry_max_age_s * 1000
        expired: list[DeadLetter] = []
        retried: list[bytes] = []
        attempts = 0
        for item in batch:
            for old in item.entries:
                e = entry.with_attempts(old, old.attempts + 1)
                attempts = max(attempts, e.attempts)
                if e.attempts >= self.settings.retry_max_attempts or now - e.enqueued_ms > max_age_ms:
                    expired.append(dead_letter(e, "expired", now, detail=outcome.detail, status=outcome.status,
                                               response=outcome.excerpt))  # fmt: skip
                else:
                    retried.append(e.raw)
        rest = work.pending[len(batch) :]
        work.pending = rest
        settlement = Settlement(requests=1, dead=expired, failed_ms=now, error=outcome.detail)
        self._settle(shard, token, work, settlement, keep=retried + _raw(rest))
        delay_ms = int(outcome.retry_after_s * 1000) if outcome.retry_after_s else self._backoff_ms(attempts)
        log.warning("shard %d: %s; %d records wait %.1f s (attempt %d)%s", shard, outcome.detail or outcome.verdict,
                    len(retried) + len(rest), delay_ms / 1000, attempts,
                    f"; {len(expired)} expired and dead-lettered" if expired else "")  # fmt: skip
        return Pause(max(1, delay_ms), retry=True)

    def _backoff_ms(self, attempts: int) -> int:
        return int(retry_delay_s(attempts, self.settings.retry_base_s, self.settings.retry_cap_s) * 1000)


def _budget_left(work: Work, user: str) -> int:
    """Identifications of ``user`` this claim may still send under its reservation."""
    return work.reserved.get(user, 0) - work.applied.get(user, 0)


def _unmerge(item: Item) -> list[Item]:
    """A merged item's updates, each on its own again, in order."""
    return [Item(e.data, (e,)) for e in item.entries]


def _raw(items: list[Item]) -> list[bytes]:
    return [e.raw for i in items for e in i.entries]


def throttled_users(outcome: Outcome, batch: list[Item]) -> set[str]:
    """Whom a 429 holds: the users, devices and records it names, or, naming none, everyone.

    Keys are the queue's user keys (``u:<user_id>`` or ``d:<device_id>``).  A device named for a
    record that has a user_id holds that record's user.
    """
    held = {f"u:{u}" for u in outcome.throttled_users} | {f"d:{d}" for d in outcome.throttled_devices}
    held |= {batch[i].user_key for i in outcome.throttled_indices}
    for device in outcome.throttled_devices:
        needle = b'"device_id":' + orjson.dumps(device)
        held |= {item.user_key for item in batch if needle in item.data}
    if not (outcome.throttled_users or outcome.throttled_devices or outcome.throttled_indices):
        held = {item.user_key for item in batch}
    return held
