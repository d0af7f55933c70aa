"""What an answer means for a claim: one pure function per verdict, each returning a Remedy.

    accepted          acknowledge; go on with the rest
    invalid records   dead-letter exactly those (a merged item is split back into its updates
                      instead, each may be fine alone); resend the others at once
    400 naming none   split the batch in halves until the bad records stand alone; dead-letter them
                      (one bad record in 1,000 costs about 2 log2(1000) = 20 extra requests); many in
                      a row, and none accepted, is the request's fault: block
    too large (413)   split the batch and lower the request size every worker uses (it recovers:
                      request_size.py); a single record still too large is dead-lettered `too_large`
    config error      stop every worker sending (a `blocked` reason in status), keep every record,
                      probe with backoff, resume on the first answer that is not a config error
    retry (5xx ...)   the shard backs off (capped, jittered); records past the maximum age or
                      number of attempts are dead-lettered as `expired`; the batch stays counted
                      against the budget (it may have been applied)
    throttled (429)   the users it names (or, naming none, every user of the batch) wait for the
                      pause Amplitude asks for, among their waiting updates (waiting.py);
                      everybody else's are resent at once

The loop (``loop.py``) applies a Remedy: it settles, blocks, lowers the request size, pauses.
Tested with a table of answers (tests/unit/test_remedies.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from producers.contract import entry
from worker.deadletter import dead_letter
from worker.drain import waiting
from worker.drain.backoff import retry_delay_s
from worker.drain.outcome import Outcome, Verdict
from worker.drain.plan import Item, raw, unmerge
from worker.drain.request_size import MIN_LEARNED_BYTES
from worker.drain.settle import DeadLetter, Parking, Settlement


class Pause(NamedTuple):
    """How long the shard waits before its next drain; ``retry`` when its own batch failed."""

    ms: int
    retry: bool


@dataclass(frozen=True)
class Rules:
    """The settings remedies follow, and what the drainer knows of this moment."""

    now_ms: int
    throttle_pause_s: float
    retry_max_age_s: float
    retry_max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    unnamed_refusals_before_block: int
    #: Single records refused by a 400 naming none, in a row, before this answer.
    unnamed_run: int = 0
    #: A random draw in [0, 1) for the backoff's jitter.
    jitter: float = 0.5


@dataclass(frozen=True)
class Remedy:
    """What the drain does with one answer to ``batch`` (the head of what was pending)."""

    #: What is still to send, in order.
    pending: list[Item]
    #: Delivered, requests, dead letters, parked users, the error shown by `status`.
    settlement: Settlement
    #: What inflight holds instead of the pending items' entries (a retry counts attempts).
    keep: list[bytes] | None = None
    #: Caps on the next batches' sizes, put in front of those already set.
    splits: tuple[int, ...] = ()
    #: Identifications that may have been applied: they stay counted against the budget.
    applied: tuple[Item, ...] = ()
    pause: Pause | None = None
    #: Sending stops for every worker, for this reason.
    block: str | None = None
    #: Requests are at most this large from now on (every worker's).
    lower_bytes: int | None = None
    #: A merged item was split back: a user may have more identifications than reserved.
    rebudget: bool = False
    #: The run of single records refused by a 400 naming none, after this answer.
    unnamed_run: int = 0
    #: What to log, and how loudly ("info", "warning").
    note: str = ""
    level: str = "info"


def remedy(outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules, *, sent_bytes: int) -> Remedy:
    """The remedy for ``outcome``, the answer to ``batch``; ``rest`` is what was pending after it."""
    verdict = outcome.verdict
    if verdict is Verdict.ACCEPTED:
        return accepted(batch, rest)
    if verdict is Verdict.THROTTLED:
        return throttled(outcome, batch, rest, rules)
    if verdict is Verdict.INVALID:
        return invalid(outcome, batch, rest, rules)
    if verdict is Verdict.UNNAMED_INVALID:
        return unnamed_invalid(outcome, batch, rest, rules)
    if verdict is Verdict.TOO_LARGE:
        return too_large(outcome, batch, rest, rules, sent_bytes=sent_bytes)
    if verdict is Verdict.CONFIG_ERROR:
        # Not the records' fault: keep them all, unchanged, and stop every worker sending.
        pending = [*batch, *rest]
        return Remedy(pending, Settlement(requests=1, error=outcome.detail), block=outcome.detail,
                      unnamed_run=rules.unnamed_run)  # fmt: skip
    return retry_later(outcome, batch, rest, rules)


def accepted(batch: Sequence[Item], rest: Sequence[Item]) -> Remedy:
    delivered = sum([len(i.entries) for i in batch])
    return Remedy(list(rest), Settlement(delivered=delivered, requests=1), applied=tuple(batch))


def throttled(outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules) -> Remedy:
    """Hold the users Amplitude throttles (all of the batch's if it names none); resend the rest."""
    held = throttled_users(outcome, batch)
    pause_ms = int(max(rules.throttle_pause_s, outcome.retry_after_s or 0) * 1000)
    waits: dict[str, list[bytes]] = {}
    others: list[Item] = []
    for item in [*batch, *rest]:
        if item.user_key in held:
            waits.setdefault(item.user_key, []).extend(waiting.members(item.entries))
        else:
            others.append(item)
    parked = [Parking(user, pause_ms, waiting.HELD, members) for user, members in waits.items()]
    error = f"HTTP 429: {len(held)} user(s) held for {pause_ms / 1000:g} s"
    return Remedy(others, Settlement(requests=1, parked=parked, error=error), unnamed_run=rules.unnamed_run,
                  note=f"{error}; {len(raw(others))} other record(s) go on")  # fmt: skip


def invalid(outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules) -> Remedy:
    """Dead-letter the records a 400 names; split a named merged item back; resend the others."""
    dead: list[DeadLetter] = []
    resend: list[Item] = []
    split = 0
    for i, item in enumerate(batch):
        if i not in outcome.invalid:
            resend.append(item)
        elif len(item.entries) > 1:
            resend += unmerge(item)  # each update may be fine on its own; in place, in order
            split += 1
        else:
            dead.append(dead_letter(item.entries[0], "invalid", rules.now_ms, detail=outcome.invalid[i],
                                    status=outcome.status, response=outcome.excerpt))  # fmt: skip
    error = f"{len(dead)} record(s) refused as invalid: {outcome.detail}"
    if split:
        error += f"; {split} merged identification(s) refused, split back into their updates"
    return Remedy([*resend, *rest], Settlement(requests=1, dead=dead, failed_ms=rules.now_ms, error=error),
                  rebudget=split > 0, unnamed_run=rules.unnamed_run, note=f"{error}; resending {len(resend)}",
                  level="warning")  # fmt: skip


def unnamed_invalid(outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules) -> Remedy:
    """Split a batch a 400 refused without naming records until the bad ones stand alone."""
    pending = [*batch, *rest]
    if len(batch) > 1:
        half = (len(batch) + 1) // 2
        return Remedy(pending, Settlement(requests=1, error=outcome.detail), splits=(half, len(batch) - half),
                      unnamed_run=rules.unnamed_run)  # fmt: skip
    if len(batch[0].entries) > 1:
        return Remedy([*unmerge(batch[0]), *rest], Settlement(requests=1, error=outcome.detail), rebudget=True,
                      unnamed_run=rules.unnamed_run)  # fmt: skip
    detail = "refused by a 400 that names no record; isolated by splitting its batch"
    dead = [dead_letter(e, "invalid", rules.now_ms, detail=detail, status=400, response=outcome.excerpt)
            for e in batch[0].entries]  # fmt: skip
    run = rules.unnamed_run + 1
    settlement = Settlement(requests=1, dead=dead, failed_ms=rules.now_ms, error=detail)
    if run >= rules.unnamed_refusals_before_block:
        # Record after record refused, and none accepted: the request itself is at fault.
        reason = f"{rules.unnamed_refusals_before_block} records in a row refused by a 400 naming none"
        return Remedy(list(rest), settlement, block=reason, unnamed_run=0)
    return Remedy(list(rest), settlement, unnamed_run=run)


def too_large(
    outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules, *, sent_bytes: int
) -> Remedy:
    """Split a batch refused with 413, and lower the request size; a lone record is dead-lettered."""
    lower = max(sent_bytes // 2, MIN_LEARNED_BYTES)
    if len(batch) > 1:
        half = (len(batch) + 1) // 2
        error = f"413 for a {sent_bytes}-byte request; requests are now at most {lower} bytes"
        return Remedy([*batch, *rest], Settlement(requests=1, error=error), splits=(half, len(batch) - half),
                      lower_bytes=lower, unnamed_run=rules.unnamed_run)  # fmt: skip
    if len(batch[0].entries) > 1:
        return Remedy([*unmerge(batch[0]), *rest], Settlement(requests=1, error=outcome.detail), rebudget=True,
                      lower_bytes=lower, unnamed_run=rules.unnamed_run)  # fmt: skip
    detail = f"a {sent_bytes}-byte request holding only this record was refused with 413"
    dead = [dead_letter(e, "too_large", rules.now_ms, detail=detail, status=413, response=outcome.excerpt)
            for e in batch[0].entries]  # fmt: skip
    return Remedy(list(rest), Settlement(requests=1, dead=dead, failed_ms=rules.now_ms, error=detail),
                  lower_bytes=lower, unnamed_run=rules.unnamed_run)  # fmt: skip


def retry_later(outcome: Outcome, batch: Sequence[Item], rest: Sequence[Item], rules: Rules) -> Remedy:
    """The shard waits and retries the batch; records too old or tried too often are dead-lettered."""
    max_age_ms = rules.retry_max_age_s * 1000
    expired: list[DeadLetter] = []
    retried: list[bytes] = []
    attempts = 0
    for item in batch:
        for old in item.entries:
            e = entry.with_attempts(old, old.attempts + 1)
            attempts = max(attempts, e.attempts)
            if e.attempts >= rules.retry_max_attempts or rules.now_ms - e.enqueued_ms > max_age_ms:
                expired.append(dead_letter(e, "expired", rules.now_ms, detail=outcome.detail, status=outcome.status,
                                           response=outcome.excerpt))  # fmt: skip
            else:
                retried.append(e.raw)
    if outcome.retry_after_s:
        delay_ms = int(outcome.retry_after_s * 1000)
    else:
        delay_ms = int(retry_delay_s(attempts, rules.retry_base_s, rules.retry_cap_s, rules.jitter) * 1000)
    note = f"{outcome.detail or outcome.verdict}; {len(retried) + len(raw(rest))} records wait {delay_ms / 1000:.1f} s"
    note += f" (attempt {attempts})" + (f"; {len(expired)} expired and dead-lettered" if expired else "")
    # A 5xx or a lost answer may have been applied: it stays counted against the budget.
    return Remedy(list(rest), Settlement(requests=1, dead=expired, failed_ms=rules.now_ms, error=outcome.detail),
                  keep=retried + raw(rest), applied=tuple(batch), pause=Pause(max(1, delay_ms), retry=True),
                  unnamed_run=rules.unnamed_run, note=note, level="warning")  # fmt: skip


def throttled_users(outcome: Outcome, batch: Sequence[Item]) -> set[str]:
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
