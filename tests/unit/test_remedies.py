"""What an answer means for a claim (worker/drain/remedies.py), as tables of real-shaped answers:
each verdict's remedy, built from (status, headers, body) through outcome.classify."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest

from producers.contract import entry
from producers.contract.entry import Entry
from worker.drain import plan, waiting
from worker.drain.outcome import Outcome, Verdict, classify, classify_error
from worker.drain.plan import Item
from worker.drain.remedies import Pause, Remedy, Rules, remedy
from worker.drain.request_size import MIN_LEARNED_BYTES
from worker.errors import SinkConnectionError, SinkTimeout

NOW = 1_700_000_000_000
RULES = Rules(now_ms=NOW, throttle_pause_s=30, retry_max_age_s=3600, retry_max_attempts=5, retry_base_s=1,
              retry_cap_s=60, unnamed_refusals_before_block=3, jitter=0.5)  # fmt: skip
J = {"content-type": "application/json"}


def e(user: str, seq: int, *, attempts: int = 0, age_ms: int = 1000, device: str | None = None) -> Entry:
    record: dict[str, Any] = {"user_id": user} if user else {}
    if device:
        record["device_id"] = device
    record["user_properties"] = {"$set": {f"p{seq}": seq}}
    key = f"u:{user}" if user else f"d:{device}"
    return entry.decode(entry.encode(key, orjson.dumps(record), seq, NOW - age_ms, attempts))


def one(x: Entry) -> Item:
    return Item(x.data, (x,))


def merged(*entries: Entry) -> Item:
    [item] = plan.items(list(entries), merge=True, max_record_bytes=64 * 1024)
    assert len(item.entries) == len(entries)
    return item


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None, size: int = 3) -> Outcome:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return classify(status, {**J, **(headers or {})}, raw, size)


def seqs(items: Sequence[Item]) -> list[int]:
    return [x.seq for x in plan.entries_of(items)]


def dead_docs(r: Remedy) -> list[dict[str, Any]]:
    return [{"reason": d.reason, "user_key": d.user_key, **orjson.loads(d.json)} for d in r.settlement.dead]


A1, B2, C3, A4, D5 = e("user-a", 1), e("user-b", 2), e("user-c", 3), e("user-a", 4), e("user-d", 5)


# -- accepted -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body"), [(200, {"code": 200, "events_ingested": 3}), (200, b"success"), (202, b"")]
)
def test_accepted_acknowledges_the_batch_and_goes_on(status: int, body: Any) -> None:
    batch = [one(B2), merged(A1, A4)]
    r = remedy(answer(status, body), batch, [one(C3)], RULES, sent_bytes=500)
    assert seqs(r.pending) == [3]
    assert (r.settlement.delivered, r.settlement.requests, r.settlement.dead, r.settlement.parked) == (3, 1, [], [])
    assert r.applied == tuple(batch)  # counted against the budget
    assert (r.keep, r.pause, r.block, r.lower_bytes, r.splits) == (None, None, None, None, ())


# -- throttled ------------------------------------------------------------------------------------
DEVICE_B = e("user-b", 2, device="device-bbbb")
DEVICE_ONLY = e("", 6, device="device-ffff")

THROTTLES = [
    # body, headers, who is held, the pause (ms)
    ({"code": 429, "throttled_users": {"user-a": 12}}, {}, {"u:user-a"}, 30_000),
    ({"code": 429, "throttled_users": ["user-a", "user-c"]}, {"retry-after": "90"}, {"u:user-a", "u:user-c"}, 90_000),
    ({"code": 429, "throttled_users": {"user-a": 12}}, {"retry-after": "5"}, {"u:user-a"}, 30_000),  # never shorter
    # a device named for a record with a user_id holds that record's user; a device-only record, its device
    ({"code": 429, "throttled_devices": {"device-bbbb": 3}}, {}, {"u:user-b", "d:device-bbbb"}, 30_000),
    ({"code": 429, "throttled_devices": {"device-ffff": 3}}, {}, {"d:device-ffff"}, 30_000),
    ({"code": 429, "throttled_events": [1]}, {}, {"u:user-b"}, 30_000),
    # naming nobody: everybody of the batch (not the rest)
    (b"Too Many Requests", {}, {"u:user-a", "u:user-b", "d:device-ffff"}, 30_000),
]  # fmt: skip


@pytest.mark.parametrize(("body", "headers", "held", "pause_ms"), THROTTLES)
def test_throttled_holds_the_named_users_and_resends_the_others(
    body: Any, headers: dict[str, str], held: set[str], pause_ms: int
) -> None:
    batch = [one(A1), one(DEVICE_B), one(DEVICE_ONLY)]
    rest = [one(C3), one(A4), one(D5)]
    r = remedy(answer(429, body, headers), batch, rest, RULES, sent_bytes=500)
    assert r.settlement.requests == 1 and r.settlement.delivered == 0
    # each held user waits with all its updates, the batch's and the rest's, for the pause
    everything = [*batch, *rest]
    expected = {u: sorted(waiting.members([x for i in everything for x in i.entries if x.user_key == u]))
                for u in held if any(i.user_key == u for i in everything)}  # fmt: skip
    assert {p.user_key: sorted(p.members) for p in r.settlement.parked} == expected
    assert {(p.hold_ms, p.reason) for p in r.settlement.parked} == {(pause_ms, waiting.HELD)}
    # everybody else goes on at once, in order
    assert r.pending == [i for i in everything if i.user_key not in held]
    assert (r.pause, r.block, r.keep, r.applied) == (None, None, None, ())
    assert r.settlement.error == f"HTTP 429: {len(held)} user(s) held for {pause_ms / 1000:g} s"


# -- 400 naming records ---------------------------------------------------------------------------
def test_a_named_invalid_record_is_dead_lettered_and_the_others_resent() -> None:
    body = {"code": 400, "error": "Request contains invalid events", "events_with_invalid_fields": {"user_id": [1]}}
    r = remedy(answer(400, body), [one(A1), one(B2), one(C3)], [one(A4)], RULES, sent_bytes=500)
    assert seqs(r.pending) == [1, 3, 4]
    [doc] = dead_docs(r)
    assert (doc["reason"], doc["user_key"], doc["seq"], doc["status"], doc["detail"], doc["failed_at_ms"]) == (
        "invalid", "u:user-b", 2, 400, "invalid field user_id", NOW
    )  # fmt: skip
    assert doc["record"] == orjson.loads(B2.data)
    assert (r.settlement.requests, r.settlement.delivered, r.settlement.failed_ms) == (1, 0, NOW)
    assert r.settlement.error == "1 record(s) refused as invalid: HTTP 400 Request contains invalid events"
    assert (r.rebudget, r.block, r.pause, r.applied) == (False, None, None, ())


def test_a_named_merged_item_is_split_back_in_place_and_nothing_dead_lettered() -> None:
    body = {"code": 400, "events_with_missing_fields": {"device_id": [0]}}
    r = remedy(answer(400, body), [merged(A1, A4), one(B2)], [one(C3)], RULES, sent_bytes=500)
    assert [(i.data, seqs([i])) for i in r.pending] == [(A1.data, [1]), (A4.data, [4]), (B2.data, [2]), (C3.data, [3])]
    assert r.settlement.dead == [] and r.rebudget  # more identifications than reserved, perhaps
    assert r.settlement.error.endswith("1 merged identification(s) refused, split back into their updates")


# -- 400 naming none ------------------------------------------------------------------------------
UNNAMED = (400, {"code": 400, "error": "Invalid request"})


@pytest.mark.parametrize(("size", "halves"), [(5, (3, 2)), (4, (2, 2)), (2, (1, 1))])
def test_an_unnamed_refusal_splits_the_batch_in_halves(size: int, halves: tuple[int, int]) -> None:
    batch = [one(e("user-x", n)) for n in range(size)]
    r = remedy(answer(*UNNAMED), batch, [one(C3)], RULES, sent_bytes=500)
    assert (r.pending, r.splits) == ([*batch, one(C3)], halves)
    assert (r.settlement.dead, r.settlement.requests, r.block, r.unnamed_run) == ([], 1, None, 0)


def test_an_unnamed_refusal_of_a_lone_merged_item_unmerges_it() -> None:
    r = remedy(answer(*UNNAMED), [merged(A1, A4)], [one(B2)], RULES, sent_bytes=500)
    assert [(i.data, seqs([i])) for i in r.pending] == [(A1.data, [1]), (A4.data, [4]), (B2.data, [2])]
    assert (r.splits, r.settlement.dead, r.rebudget) == ((), [], True)


@pytest.mark.parametrize(
    ("run", "blocked", "run_after"),
    [
        (0, None, 1),
        (1, None, 2),
        # the third single record in a row refused: the request itself is at fault
        (2, "3 records in a row refused by a 400 naming none", 0),
    ],
)
def test_a_lone_record_refused_unnamed_is_dead_lettered_and_a_run_of_them_blocks(
    run: int, blocked: str | None, run_after: int
) -> None:
    rules = replace(RULES, unnamed_run=run)
    r = remedy(answer(*UNNAMED), [one(B2)], [one(C3)], rules, sent_bytes=500)
    [doc] = dead_docs(r)
    assert (doc["reason"], doc["seq"], doc["status"]) == ("invalid", 2, 400)
    assert doc["detail"] == "refused by a 400 that names no record; isolated by splitting its batch"
    assert seqs(r.pending) == [3]
    assert (r.block, r.unnamed_run) == (blocked, run_after)


# -- 413 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sent", "lower"), [(100_000, 50_000), (1500, MIN_LEARNED_BYTES)])
def test_too_large_splits_the_batch_and_lowers_the_request_size(sent: int, lower: int) -> None:
    batch = [one(A1), one(B2), one(C3)]
    r = remedy(answer(413, {"code": 413, "error": "Payload too large"}), batch, [], RULES, sent_bytes=sent)
    assert (r.pending, r.splits, r.lower_bytes) == (batch, (2, 1), lower)
    assert r.settlement.error == f"413 for a {sent}-byte request; requests are now at most {lower} bytes"
    assert r.settlement.dead == []


def test_too_large_unmerges_a_lone_merged_item() -> None:
    r = remedy(answer(413), [merged(A1, A4)], [one(B2)], RULES, sent_bytes=10_000)
    assert seqs(r.pending) == [1, 4, 2] and len(r.pending) == 3
    assert (r.lower_bytes, r.rebudget, r.settlement.dead, r.splits) == (5000, True, [], ())


def test_a_lone_record_too_large_is_dead_lettered() -> None:
    r = remedy(answer(413), [one(B2)], [one(C3)], RULES, sent_bytes=10_000)
    [doc] = dead_docs(r)
    assert (doc["reason"], doc["seq"], doc["status"]) == ("too_large", 2, 413)
    assert doc["detail"] == "a 10000-byte request holding only this record was refused with 413"
    assert (seqs(r.pending), r.lower_bytes) == ([3], 5000)


# -- configuration errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"code": 400, "error": "Invalid API key: ***"}, "HTTP 400 Invalid API key: ***"),
        (400, {"code": 400, "missing_field": "api_key"}, "HTTP 400 missing api_key"),
        (401, b"unauthorized", "HTTP 401 unauthorized"),
        (404, b"not found", "HTTP 404 not found"),
    ],
)
def test_a_configuration_error_keeps_every_record_and_blocks_sending(status: int, body: Any, reason: str) -> None:
    batch, rest = [one(A1), merged(B2, e("user-b", 7))], [one(C3)]
    rules = replace(RULES, unnamed_run=2)
    r = remedy(answer(status, body), batch, rest, rules, sent_bytes=500)
    assert r.pending == [*batch, *rest]
    assert r.block == reason and r.settlement.error == reason
    assert (r.settlement.requests, r.settlement.dead, r.settlement.parked, r.keep, r.applied) == (1, [], [], None, ())
    assert r.unnamed_run == 2  # neither a refusal of records nor an acceptance


# -- retry ----------------------------------------------------------------------------------------
def test_a_retryable_answer_keeps_the_batch_in_flight_with_its_attempts_counted() -> None:
    batch, rest = [one(A1), merged(B2, e("user-b", 7))], [one(C3)]
    r = remedy(answer(503, {"code": 503, "error": "unavailable"}), batch, rest, RULES, sent_bytes=500)
    retried = [entry.with_attempts(x, 1).raw for x in (A1, B2, e("user-b", 7))]
    assert r.keep == [*retried, C3.raw]
    assert r.pending == rest  # what is left to send in this claim: nothing of the batch
    # the first attempt waits the base step, jittered: 1 s * (1/2 + 1/2 * 0.5)
    assert r.pause == Pause(750, retry=True)
    assert r.applied == tuple(batch)  # it may have been applied: it stays counted
    assert (r.settlement.dead, r.settlement.requests, r.settlement.error) == ([], 1, "HTTP 503 unavailable")


@pytest.mark.parametrize(
    ("outcome", "attempts", "pause_ms"),
    [
        (answer(500), 0, 750),
        (answer(500), 3, 6000),  # the fourth failure: step 8 s
        (answer(500), 9, 45_000),  # capped at 60 s
        (answer(502, b"", {"retry-after": "7"}), 3, 7000),  # Retry-After wins over the backoff
        (answer(408), 0, 750),
        (classify_error(SinkTimeout("slow")), 1, 1500),
        (classify_error(SinkConnectionError("refused")), 0, 750),
    ],
)
def test_the_retry_waits_as_the_attempts_or_the_server_say(outcome: Outcome, attempts: int, pause_ms: int) -> None:
    assert outcome.verdict is Verdict.RETRY
    rules = replace(RULES, retry_max_attempts=100)
    r = remedy(outcome, [one(e("user-a", 1, attempts=attempts))], [], rules, sent_bytes=500)
    assert r.pause == Pause(pause_ms, retry=True)
    assert [entry.decode(raw).attempts for raw in r.keep or []] == [attempts + 1]


@pytest.mark.parametrize(
    ("attempts", "age_ms", "expired"),
    [
        (3, 1000, False),
        (4, 1000, True),  # the fifth attempt was the last
        (0, 3_600_000, False),
        (0, 3_600_001, True),  # older than the maximum age
    ],
)
def test_records_tried_too_often_or_too_old_are_dead_lettered_as_expired(
    attempts: int, age_ms: int, expired: bool
) -> None:
    old = e("user-a", 1, attempts=attempts, age_ms=age_ms)
    r = remedy(answer(500, {"code": 500, "error": "internal"}), [one(old), one(B2)], [], RULES, sent_bytes=500)
    assert r.keep == ([] if expired else [entry.with_attempts(old, attempts + 1).raw]) + [
        entry.with_attempts(B2, 1).raw
    ]
    docs = dead_docs(r)
    if expired:
        assert [(d["reason"], d["seq"], d["attempts"], d["status"], d["detail"]) for d in docs] == [
            ("expired", 1, attempts + 1, 500, "HTTP 500 internal")
        ]
        assert r.settlement.failed_ms == NOW
    else:
        assert docs == []
    assert r.pause is not None and r.pause.retry
