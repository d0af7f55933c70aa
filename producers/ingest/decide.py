"""What a request to the HTTP ingest endpoint means, and what to answer: pure functions, no I/O.

The WSGI application (``producers/ingest/server.py``) routes a request, reads its body, and asks
``decide``, which either refuses the request with an ``Answer`` or returns the validated records to
enqueue.  Checks, in order; each refuses the request as a whole, so nothing of it is enqueued:

    size          body above IDENTIFY_INGEST_MAX_BODY_BYTES              413
    envelope      Content-Type / Content-Encoding not read here           415
                  form, multipart or JSON body that cannot be read        400   (ingest_envelope.py)
    credentials   none (Authorization: Bearer, else the api_key field)    401
                  not a configured token                                  403
    identification absent, not JSON, not an object or non-empty array     400
                  a key given twice in one JSON object                    400
                  more than IDENTIFY_INGEST_MAX_RECORDS                   413
    records       event fields dropped and counted, camelCase renamed (``as_identification``);
                  any breaking a rule: 400 naming every one, Amplitude-style and per index

Credentials are checked before the identification is even parsed (a Bearer header before the
body is), so an unauthenticated client cannot make the endpoint parse or validate anything but
the envelope.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from producers.contract.errors import (
    IdentifyQueueError,
    InvalidRecord,
    MalformedRequest,
    MissingCredentials,
    NotReplicated,
    QueueFull,
    QueueMismatch,
    RequestRefused,
    RequestTooLarge,
    StoreError,
    WrongCredentials,
)
from producers.contract.settings import QueueConfig
from producers.ingest.envelope import read_envelope
from producers.ingest.settings import IngestSettings, token_digest
from producers.record import CAMEL_CASE, EVENT_FIELDS, ValidRecord, repeated_key, validate

IDENTIFY_PATH = "/identify"
HEALTH_PATH = "/healthz"


class Route(StrEnum):
    IDENTIFY = "identify"
    HEALTH = "health"


@dataclass(frozen=True)
class Request:
    """The parts of an HTTP request that decide its answer."""

    body: bytes
    content_type: str = ""
    content_encoding: str = ""
    authorization: str = ""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps(self.body)


@dataclass(frozen=True)
class Accept:
    """A request whose every record passed: enqueue these, then answer ``answer_accepted``."""

    records: Sequence[ValidRecord]
    payload_bytes: int
    #: Event fields dropped from the records, by name as sent: how many records had each.
    ignored: Mapping[str, int] = field(default_factory=dict)


# -- routing and the whole decision ------------------------------------------------------------------
def route(method: str, path: str) -> Route | Answer:
    if path == IDENTIFY_PATH:
        if method == "POST":
            return Route.IDENTIFY
        return Answer(405, {"code": 405, "error": "Method not allowed: use POST /identify"}, (("Allow", "POST"),))
    if path == HEALTH_PATH:
        if method == "GET":
            return Route.HEALTH
        return Answer(405, {"code": 405, "error": "Method not allowed: use GET /healthz"}, (("Allow", "GET"),))
    return Answer(
        404, {"code": 404, "error": f"Not found: the endpoints are POST {IDENTIFY_PATH} and GET {HEALTH_PATH}"}
    )


def check_size(length: int, max_body_bytes: int) -> None:
    """Refuse a body by its length, before it is read."""
    if length > max_body_bytes:
        raise RequestTooLarge(f"Payload too large: {length} bytes, at most {max_body_bytes} per request")


def decide(request: Request, settings: IngestSettings) -> Accept | Answer:
    """Refuse the request, or return its records, every one of them valid."""
    try:
        check_size(len(request.body), settings.max_body_bytes)
        token = bearer(request.authorization)
        if token is not None:  # known before the body is parsed
            authenticate(token, settings.token_digests)
        envelope = read_envelope(request.content_type, request.content_encoding, request.body)
        if token is None:
            authenticate(envelope.api_key, settings.token_digests)
        if envelope.document is not None:
            refuse_repeated_key(request.body, envelope.document, "")
        items = identifications(envelope.identification, settings.max_records)
    except RequestRefused as refused:
        return answer_refused(refused)
    valid, rejected, ignored = validate_all(items, settings.queue)
    if rejected:
        return answer_invalid(rejected, len(items))
    return Accept(valid, len(request.body), ignored)


# -- credentials -----------------------------------------------------------------------------------
def bearer(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without the header.

    The header wins over the ``api_key`` field, which may then hold anything (a client library
    may insist on sending one).
    """
    if not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingCredentials("Invalid request: the Authorization header must be 'Bearer <token>'")
    return token.strip()


def authenticate(token: str | None, digests: tuple[bytes, ...] | None) -> None:
    """Accept a configured token (every one is compared, in constant time); None accepts anyone."""
    if digests is None:
        return
    if not token:
        raise MissingCredentials("Request missing required field", missing_field="api_key")
    given = token_digest(token)
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given, digest)
    if not matched:
        raise WrongCredentials("Invalid API key: not an ingest token of this endpoint")


# -- identifications and records ---------------------------------------------------------------------
def identifications(value: Any, max_records: int) -> list[Any]:
    """The identification field as a list of items: one object, or an array of at most max_records.

    In a form it is JSON text; in a JSON body it is the value itself (or JSON text, for clients that
    translate the form literally).
    """
    if isinstance(value, str | bytes):
        if not value.strip():
            value = None
        else:
            try:
                text, value = value, orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise MalformedRequest(f"Invalid request: identification is not valid JSON ({exc})") from None
            refuse_repeated_key(text, value, "identification")
    if value is None:
        raise MalformedRequest("Request missing required field", missing_field="identification")
    if type(value) is dict:
        return [value]
    if type(value) is not list:
        raise MalformedRequest("Invalid request: identification must be a JSON object or an array of objects")
    if not value:
        raise MalformedRequest("Invalid request: identification is an empty array")
    if len(value) > max_records:
        raise RequestTooLarge(f"Payload too large: {len(value)} identifications, at most {max_records} per request")
    return value


def refuse_repeated_key(text: bytes | str, value: Any, what: str) -> None:
    """A key given twice in one JSON object refuses the request: JSON would keep one of the two
    values silently (two user_ids: whose update is it?)."""
    found = repeated_key(text, orjson.dumps(value))
    if found is not None:
        path, key = found
        if not what:
            where = path or "the JSON body"
        else:
            where = f"{what}{path if path.startswith('[') or not path else '.' + path}"
        raise MalformedRequest(f"Invalid request: key {key!r} appears twice in {where} (JSON would keep only the "
                               "last value)")  # fmt: skip


def validate_all(
    items: Sequence[Any], queue: QueueConfig
) -> tuple[list[ValidRecord], list[InvalidRecord], dict[str, int]]:
    """Every item as an identification (``as_identification``) validated with the producers' rules
    and limits; all rejections, with their index; how many records had each event field dropped."""
    valid: list[ValidRecord] = []
    rejected: list[InvalidRecord] = []
    ignored: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            record, dropped = as_identification(item)
            valid.append(validate(record, min_id_length=queue.min_id_length, max_record_bytes=queue.max_record_bytes,
                                  parsed=True))  # fmt: skip
        except InvalidRecord as exc:
            rejected.append(exc.at(index))
            continue
        for name in dropped:
            ignored[name] = ignored.get(name, 0) + 1
    return valid, rejected, ignored


def as_identification(item: Any) -> tuple[Any, tuple[str, ...]]:
    """What an Amplitude client sent to /identify, as the identification Amplitude reads from it.

    Clients written for both of Amplitude's endpoints send event fields along (``session_id``,
    ``event_properties``...): Amplitude ignores them in /identify, so they are dropped here, and
    named in the answer.  camelCase spellings of identification fields (``userId``) are renamed;
    one given in both spellings is refused, as neither can be said to win.  Anything else is left
    for ``validate`` to judge, so an unknown field is still refused.
    """
    if type(item) is not dict:
        return item, ()
    if not any(name in EVENT_FIELDS or name in CAMEL_CASE for name in item):
        return item, ()  # what nearly every request holds: nothing to copy
    record: dict[Any, Any] = {}
    dropped: list[str] = []
    for name, value in item.items():
        if name in EVENT_FIELDS:
            dropped.append(name)
            continue
        target: Any = CAMEL_CASE.get(name, name)
        if target in record or (target != name and target in item):
            raise InvalidRecord(str(target), "duplicate_field", f"given both as {target} and as {name}")
        record[target] = value
    return record, tuple(dropped)


# -- answers ---------------------------------------------------------------------------------------
def answer_accepted(count: int, payload_bytes: int, now_ms: int, ignored: Mapping[str, int] | None = None) -> Answer:
    """Amplitude's 200, and ``ignored_fields`` (field -> records) when event fields were dropped."""
    body: dict[str, Any] = {"code": 200, "events_ingested": count, "payload_size_bytes": payload_bytes,
                            "server_upload_time": now_ms}  # fmt: skip
    if ignored:
        body["ignored_fields"] = dict(ignored)
    return Answer(200, body)


def answer_refused(refused: RequestRefused) -> Answer:
    body: dict[str, Any] = {"code": refused.status, "error": str(refused)}
    if refused.missing_field:
        body["missing_field"] = refused.missing_field
    headers = (("WWW-Authenticate", 'Bearer realm="identify-queue"'),) if refused.status == 401 else ()
    return Answer(refused.status, body, headers)


def answer_invalid(rejected: Sequence[InvalidRecord], total: int) -> Answer:
    """400 naming each bad record: Amplitude's field -> indices maps, and a list with the reasons.

    A record with neither id is *missing* both (Amplitude's ``events_with_missing_fields``); any
    other rule makes the record's top-level field *invalid* (``identification`` for the whole).
    """
    invalid: dict[str, list[int]] = {}
    missing: dict[str, list[int]] = {}
    for exc in rejected:
        index = exc.index if exc.index is not None else 0
        if exc.rule == "missing_id":
            for name in ("user_id", "device_id"):
                missing.setdefault(name, []).append(index)
        else:
            invalid.setdefault(top_field(exc), []).append(index)
    body: dict[str, Any] = {
        "code": 400,
        "error": f"Request contains invalid identifications: {len(rejected)} of {total}; none was enqueued",
    }
    if invalid:
        body["events_with_invalid_fields"] = invalid
    if missing:
        body["events_with_missing_fields"] = missing
    body["invalid_identifications"] = [
        {"index": exc.index, "field": exc.field, "rule": exc.rule, "message": exc.detail} for exc in rejected
    ]
    return Answer(400, body)


def top_field(exc: InvalidRecord) -> str:
    """The identification's field a rejection is about (the path's first part)."""
    if not exc.field:
        return "identification"
    if exc.rule == "unknown_field":
        return exc.field  # a name of the caller's, which may itself hold dots
    return exc.field.split(".", 1)[0].split("[", 1)[0]


def answer_failure(exc: IdentifyQueueError, retry_after_s: int) -> Answer:
    """The answer when the enqueue itself failed, after the request was accepted as valid."""
    retry = (("Retry-After", str(retry_after_s)),)
    if isinstance(exc, QueueFull):
        return Answer(503, {"code": 503, "error": f"Queue full ({exc.queued} of {exc.cap} records queued): "
                            "nothing was enqueued, retry later", "retry_after_s": retry_after_s}, retry)  # fmt: skip
    if isinstance(exc, NotReplicated):
        error = ("Enqueued on the master, but not confirmed by enough replicas in time (IDENTIFY_MIN_REPLICAS): "
                 "not acknowledged, retry later (a retry may enqueue the records twice)")  # fmt: skip
        return Answer(503, {"code": 503, "error": error, "retry_after_s": retry_after_s}, retry)
    if isinstance(exc, StoreError):
        # A lost answer from Redis may hide a script that ran: "may not", so a retry can duplicate.
        return Answer(503, {"code": 503, "error": "Queue unavailable (Redis cannot be reached): the records may "
                            "not have been enqueued, retry later", "retry_after_s": retry_after_s}, retry)  # fmt: skip
    if isinstance(exc, QueueMismatch):
        # The operator's mistake, not the client's; the log says what to fix.
        return Answer(500, {"code": 500, "error": "The ingest endpoint is misconfigured (queue layout); see its log"})
    return answer_internal()


def answer_internal() -> Answer:
    return Answer(500, {"code": 500, "error": "Internal error; see the endpoint's log"})


def answer_health(redis_ok: bool) -> Answer:
    if not redis_ok:
        return Answer(503, {"status": "unavailable", "error": "Redis cannot be reached"})
    return Answer(200, {"status": "ok"})
