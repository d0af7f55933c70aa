"""What `status` decides from what it read: a queue there or not, a layout to refuse, the age of the
last error; and the dead-letter gauge's series."""

from __future__ import annotations

from typing import Any

import pytest

from producers.contract.errors import QueueMismatch
from producers.producer import LAYOUT_VERSION
from worker.metrics import dead_letter_series
from worker.status import age, layout_mismatch, queue_found, render


@pytest.mark.parametrize(
    ("has_meta", "accepted", "dead", "delivered", "found"),
    [
        (False, 0, 0, 0, False),  # a mistyped namespace: nothing at all
        (True, 0, 0, 0, True),  # laid out, empty
        (False, 5, 0, 0, True),  # records without their meta (deleted by hand): still a queue
        (False, 0, 2, 0, True),
        (False, 0, 0, 9, True),
    ],
)
def test_a_namespace_holds_a_queue_when_anything_says_so(
    has_meta: bool, accepted: int, dead: int, delivered: int, found: bool
) -> None:
    assert queue_found(has_meta, accepted, dead, delivered) is found


@pytest.mark.parametrize(
    ("stored_shards", "stored_format", "shards", "refused"),
    [
        (None, None, 16, None),  # no queue yet: nothing to compare
        (16, LAYOUT_VERSION, 16, None),
        (8, LAYOUT_VERSION, 16, "IDENTIFY_SHARDS is 16, but the queue in Redis was created with 8 shards"),
        (16, "1", 16, "entry format 1"),
    ],
)
def test_status_refuses_a_layout_other_than_its_settings(
    stored_shards: int | None, stored_format: str | None, shards: int, refused: str | None
) -> None:
    found = layout_mismatch({"layout": {"shards": stored_shards, "format": stored_format}}, shards)
    if refused is None:
        assert found is None
    else:
        assert isinstance(found, QueueMismatch) and refused in str(found)


@pytest.mark.parametrize(
    ("ms", "now", "text"),
    [(1000, 1000, "0 s ago"), (0, 42_000, "42 s ago"), (0, 600_000, "10 min ago"), (0, 5 * 3_600_000, "5.0 h ago"),
     (0, 3 * 86_400_000, "3 days ago"), (2000, 1000, "0 s ago")],
)  # fmt: skip
def test_an_age_reads_in_the_unit_a_person_expects(ms: int, now: int, text: str) -> None:
    assert age(ms, now) == text


def status(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "queued": 0, "in_flight": 0, "held": 0, "deferred": 0, "dead_letter": 0, "dead_letter_by_reason": {},
        "delivered": 0, "requests": 0, "delivery_rate_per_s": 0.0, "enqueued": 0, "dead_lettered": 0, "replayed": 0,
        "last_delivery_ms": None, "blocked": None, "last_error": None, "last_error_ms": None, "workers": [],
        "shards": [], "time_ms": 10_000_000, "queue_found": True,
    }  # fmt: skip
    return {**base, **fields}


def test_the_last_error_shows_its_age_and_whether_deliveries_followed_it() -> None:
    failing = render(status(last_error="HTTP 503", last_error_ms=9_990_000))
    assert "last error    10 s ago: HTTP 503" in failing and "delivered since" not in failing
    recovered = render(status(last_error="HTTP 503", last_error_ms=6_400_000, last_delivery_ms=9_000_000))
    assert "last error    60 min ago: HTTP 503 (delivered since)" in recovered


def test_an_empty_namespace_is_said_so() -> None:
    assert render(status(queue_found=False), "identfy").splitlines()[0] == (
        "no queue in namespace 'identfy': no producer or worker has used it yet (is IDENTIFY_NAMESPACE right?)"
    )
    assert "no queue" not in render(status())


@pytest.mark.parametrize(
    ("counts", "series"),
    [
        ({}, {"invalid": 0, "too_large": 0, "expired": 0, "undecodable": 0, "poison": 0}),
        ({"expired": 3}, {"invalid": 0, "too_large": 0, "expired": 3, "undecodable": 0, "poison": 0}),
        ({"future": 1}, {"invalid": 0, "too_large": 0, "expired": 0, "undecodable": 0, "poison": 0, "future": 1}),
    ],
)
def test_the_dead_letter_gauge_reports_zero_for_every_empty_reason(
    counts: dict[str, int], series: dict[str, int]
) -> None:
    assert dead_letter_series(counts) == series
