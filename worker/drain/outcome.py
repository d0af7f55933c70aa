"""What an answer from /identify means: one pure function, tested with a table of real-shaped answers.

    2xx                                        ACCEPTED        acknowledge the batch
    400 naming indices (invalid/missing
        fields, silenced events)               INVALID         dead-letter those, resend the rest
    400 about the API key or a missing
        api_key / identification field         CONFIG_ERROR    stop sending, keep everything, probe
    400 naming nothing                         UNNAMED_INVALID split the batch to find the bad ones
    413                                        TOO_LARGE       split, and lower the byte limit
    429                                        THROTTLED       hold the users it names (or all)
    408, 5xx, timeouts, connection errors      RETRY           back off, the shard waits
    3xx and other 4xx (401, 403, 404 ...)      CONFIG_ERROR    wrong URL or credentials: probe

Amplitude's 200 body is JSON (``{"code":200,"events_ingested":N,...}``) or, on the seed page,
the plain text ``success``; any 2xx is accepted whatever its body.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from worker.errors import SinkError, SinkTimeout

EXCERPT_CHARS = 500
_CONFIG_FIELDS = {"api_key", "api-key", "identification"}


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    INVALID = "invalid"
    UNNAMED_INVALID = "unnamed_invalid"
    CONFIG_ERROR = "config_error"
    TOO_LARGE = "too_large"
    THROTTLED = "throttled"
    RETRY = "retry"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    status: int | None
    #: One line for logs and `status`: what went wrong, without the request or the API key.
    detail: str = ""
    #: Index in the batch -> why Amplitude refused that record (INVALID).
    invalid: Mapping[int, str] = field(default_factory=dict)
    #: THROTTLED: who Amplitude names; all three empty means every record of the batch.
    throttled_users: frozenset[str] = frozenset()
    throttled_devices: frozenset[str] = frozenset()
    throttled_indices: frozenset[int] = frozenset()
    #: Seconds the server asked us to wait (Retry-After), if it did.
    retry_after_s: float | None = None
    excerpt: str = ""


def classify(status: int, headers: Mapping[str, str], body: bytes, batch_size: int) -> Outcome:
    """The verdict on one HTTP answer to a batch of ``batch_size`` records."""
    excerpt = body[:EXCERPT_CHARS].decode("utf-8", "replace")
    if 200 <= status < 300:
        return Outcome(Verdict.ACCEPTED, status, excerpt=excerpt)
    doc = _json_object(body)
    error = str(doc.get("error", "")) if doc else excerpt.strip()
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 400:
        return _classify_400(doc, error, batch_size, excerpt)
    if status == 413:
        return Outcome(Verdict.TOO_LARGE, status, "payload too large", excerpt=excerpt)
    if status == 429:
        return _classify_429(doc, batch_size, retry_after, excerpt)
    if status == 408 or status >= 500:
        return Outcome(Verdict.RETRY, status, f"HTTP {status} {error}".strip()[:200], retry_after_s=retry_after,
                       excerpt=excerpt)  # fmt: skip
    return Outcome(Verdict.CONFIG_ERROR, status, f"HTTP {status} {error}".strip()[:200], excerpt=excerpt)


def classify_error(exc: SinkError) -> Outcome:
    """A request that ended without an answer is always worth retrying."""
    kind = "timeout" if isinstance(exc, SinkTimeout) else "connection error"
    return Outcome(Verdict.RETRY, None, f"{kind}: {exc}"[:200])


def _classify_400(doc: dict[str, Any] | None, error: str, batch_size: int, excerpt: str) -> Outcome:
    doc = doc or {}
    lowered = error.lower()
    missing = doc.get("missing_field")
    if "api key" in lowered or "api_key" in lowered or (isinstance(missing, str) and missing in _CONFIG_FIELDS):
        return Outcome(Verdict.CONFIG_ERROR, 400, f"HTTP 400 {error or 'missing ' + str(missing)}"[:200],
                       excerpt=excerpt)  # fmt: skip
    invalid: dict[int, str] = {}
    for key, why in (("events_with_invalid_fields", "invalid"), ("events_with_missing_fields", "missing")):
        fields = doc.get(key)
        if isinstance(fields, dict):
            for name, indices in fields.items():
                for i in _indices(indices, batch_size):
                    invalid.setdefault(i, f"{why} field {name}")
    for key in ("silenced_events", "silenced"):
        for i in _indices(doc.get(key), batch_size):
            invalid.setdefault(i, "silenced device")
    if invalid:
        return Outcome(Verdict.INVALID, 400, f"HTTP 400 {error}".strip()[:200], invalid=invalid, excerpt=excerpt)
    return Outcome(Verdict.UNNAMED_INVALID, 400, f"HTTP 400 {error}".strip()[:200], excerpt=excerpt)


def _classify_429(doc: dict[str, Any] | None, batch_size: int, retry_after: float | None, excerpt: str) -> Outcome:
    doc = doc or {}
    users = _names(doc.get("throttled_users"))
    devices = _names(doc.get("throttled_devices"))
    indices = frozenset(_indices(doc.get("throttled_events"), batch_size))
    return Outcome(
        Verdict.THROTTLED, 429, "HTTP 429 throttled",
        throttled_users=users, throttled_devices=devices, throttled_indices=indices,
        retry_after_s=retry_after, excerpt=excerpt,
    )  # fmt: skip


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, min(seconds, 3600.0))


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _indices(value: Any, batch_size: int) -> list[int]:
    if not isinstance(value, list):
        return []
    return [i for i in value if type(i) is int and 0 <= i < batch_size]


def _names(value: Any) -> frozenset[str]:
    """HTTP V2 gives throttled users as a map id -> count; accept a list of ids as well."""
    if isinstance(value, dict):
        return frozenset(str(k) for k in value)
    if isinstance(value, list):
        return frozenset(str(v) for v in value if isinstance(v, str | int))
    return frozenset()
