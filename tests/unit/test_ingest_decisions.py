"""The ingest endpoint's decisions, as tables: what a request means and what it is answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote_to_bytes, urlencode

import orjson
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.contract.errors import ConfigError, InvalidRecord, QueueFull, QueueMismatch, StoreError
from producers.contract.settings import QueueConfig
from producers.ingest.decide import (
    Accept,
    Answer,
    Request,
    Route,
    answer_failure,
    answer_invalid,
    as_identification,
    decide,
    route,
)
from producers.ingest.envelope import form_fields, unquote_form
from producers.ingest.settings import IngestSettings, token_digest

TOKEN = "ingest-token-0123456789abcdef"  # noqa: S105 (a test's token)
OTHER = "other-token-0123456789abcdef"
SETTINGS = IngestSettings(queue=QueueConfig(), token_digests=(token_digest(TOKEN),), max_body_bytes=4096,
                          max_records=3)  # fmt: skip
GOOD = {"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}}}
GOOD2 = {"device_id": "device-00002", "platform": "iOS"}
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def form(**fields: Any) -> bytes:
    return urlencode({k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in fields.items()}).encode()


def multipart(**fields: str) -> tuple[str, bytes]:
    prepared = requests.Request("POST", "http://x/identify", files={k: (None, v) for k, v in fields.items()}).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.headers["Content-Type"], prepared.body


MP_TYPE, MP_BODY = multipart(api_key=TOKEN, identification=orjson.dumps([GOOD, GOOD2]).decode())


@dataclass
class Case:
    name: str
    request: Request
    status: int  # 200 for Accept
    #: the records accepted, or a subset of the answer's body (a text ending in "..." is a prefix)
    expect: dict[str, Any] | list[dict[str, Any]]
    settings: IngestSettings = SETTINGS


CASES = [
    # accepted: each body format, one object or an array, the token in the body or the header
    Case("form, one object", Request(form(api_key=TOKEN, identification=GOOD), FORM), 200, [GOOD]),
    Case("form, an array, in order", Request(form(api_key=TOKEN, identification=[GOOD2, GOOD]), FORM), 200,
         [GOOD2, GOOD]),
    Case("form without Content-Type", Request(form(api_key=TOKEN, identification=GOOD)), 200, [GOOD]),
    Case("form, api-key spelling", Request(form(**{"api-key": TOKEN}, identification=GOOD), FORM), 200, [GOOD]),
    Case("form with an extra field", Request(form(api_key=TOKEN, identification=GOOD, options="{}"), FORM), 200,
         [GOOD]),
    Case("JSON body, array value", Request(orjson.dumps({"api_key": TOKEN, "identification": [GOOD, GOOD2]}),
                                           "application/json; charset=utf-8"), 200, [GOOD, GOOD2]),
    Case("JSON body, object value", Request(orjson.dumps({"api_key": TOKEN, "identification": GOOD}), JSON), 200,
         [GOOD]),
    Case("JSON body, identification as JSON text",
         Request(orjson.dumps({"api_key": TOKEN, "identification": orjson.dumps(GOOD).decode()}), JSON), 200, [GOOD]),
    Case("multipart/form-data", Request(MP_BODY, MP_TYPE), 200, [GOOD, GOOD2]),
    Case("Bearer header, no api_key", Request(form(identification=GOOD), FORM, authorization=f"Bearer {TOKEN}"), 200,
         [GOOD]),
    Case("Bearer header wins over a wrong api_key",
         Request(form(api_key="amplitude-key", identification=GOOD), FORM, authorization=f"bearer  {TOKEN} "), 200,
         [GOOD]),
    Case("the second of two tokens (rotation)", Request(form(api_key=OTHER, identification=GOOD), FORM), 200, [GOOD],
         IngestSettings(token_digests=(token_digest(TOKEN), token_digest(OTHER)))),
    Case("no authentication (--insecure-no-auth)", Request(form(identification=GOOD), FORM), 200, [GOOD],
         IngestSettings(token_digests=None)),
    Case("gzip is refused, identity is fine", Request(form(api_key=TOKEN, identification=GOOD), FORM, "identity"),
         200, [GOOD]),
    # credentials
    Case("no token", Request(form(identification=GOOD), FORM), 401,
         {"error": "Request missing required field", "missing_field": "api_key"}),
    Case("empty api_key", Request(form(api_key="", identification=GOOD), FORM), 401, {"missing_field": "api_key"}),
    Case("wrong token", Request(form(api_key=OTHER, identification=GOOD), FORM), 403,
         {"error": "Invalid API key: not an ingest token of this endpoint"}),
    Case("a token's prefix", Request(form(api_key=TOKEN[:-1], identification=GOOD), FORM), 403, {}),
    Case("wrong Bearer, right api_key: the header wins",
         Request(form(api_key=TOKEN, identification=GOOD), FORM, authorization=f"Bearer {OTHER}"), 403, {}),
    Case("Authorization of another scheme", Request(form(identification=GOOD), FORM, authorization=f"Basic {TOKEN}"),
         401, {"error": "Invalid request: the Authorization header must be 'Bearer <token>'"}),
    Case("Bearer without a token", Request(form(identification=GOOD), FORM, authorization="Bearer "), 401, {}),
    Case("no configured token accepts nobody", Request(form(api_key=TOKEN, identification=GOOD), FORM), 403, {},
         IngestSettings()),
    Case("credentials before the identification is parsed", Request(b"identification=%7Bnot-json", FORM), 401, {}),
    Case("a Bearer header before the body is parsed", Request(b"{", JSON, authorization=f"Bearer {OTHER}"), 403, {}),
    # malformed requests
    Case("identification not JSON", Request(form(api_key=TOKEN, identification="{user_id: 1}"), FORM), 400,
         {"error": "Invalid request: identification is not valid JSON (..."}),
    Case("no identification", Request(form(api_key=TOKEN), FORM), 400,
         {"error": "Request missing required field", "missing_field": "identification"}),
    Case("blank identification", Request(form(api_key=TOKEN, identification=" "), FORM), 400,
         {"missing_field": "identification"}),
    Case("identification a number", Request(form(api_key=TOKEN, identification=5), FORM), 400,
         {"error": "Invalid request: identification must be a JSON object or an array of objects"}),
    Case("identification an empty array", Request(form(api_key=TOKEN, identification=[]), FORM), 400,
         {"error": "Invalid request: identification is an empty array"}),
    Case("identification twice", Request(form(api_key=TOKEN, identification=GOOD) + b"&identification=%7B%7D", FORM),
         400, {"error": "Invalid request: field identification is given 2 times"}),
    Case("api_key not UTF-8", Request(b"api_key=%ff&identification=%7B%7D", FORM), 400,
         {"error": "Invalid request: api_key is not UTF-8"}),
    Case("field name not UTF-8", Request(b"%ff=1", FORM), 400,
         {"error": "Invalid request: a form field name is not UTF-8"}),
    Case("identification not UTF-8", Request(form(api_key=TOKEN) + b"&identification=%22%ff%22", FORM), 400,
         {"error": "Invalid request: identification is not valid JSON (..."}),
    Case("too many form fields", Request(b"&".join(b"f%d=1" % i for i in range(101)), FORM), 400,
         {"error": "Invalid request: more than 100 form fields"}),
    Case("100 form fields are fine", Request(form(api_key=TOKEN, identification=GOOD) + b"&f=1" * 98, FORM), 200,
         [GOOD]),
    Case("JSON body not JSON", Request(b"api_key=x", JSON), 400,
         {"error": "Invalid request: the body is not valid JSON (..."}),
    Case("JSON body an array", Request(orjson.dumps([GOOD]), JSON), 400,
         {"error": 'Invalid request: a JSON body must be an object {"api_key": ..., "identification": ...}'}),
    Case("JSON api_key not a string", Request(orjson.dumps({"api_key": 5, "identification": GOOD}), JSON), 400,
         {"error": "Invalid request: api_key must be a string"}),
    Case("JSON body without identification", Request(orjson.dumps({"api_key": TOKEN}), JSON), 400,
         {"missing_field": "identification"}),
    Case("multipart without its boundary", Request(MP_BODY, "multipart/form-data"), 400,
         {"error": "Invalid request: the multipart body cannot be read (boundary missing or wrong)"}),
    Case("unsupported Content-Type", Request(b"x", "text/plain"), 415,
         {"error": "Content-Type 'text/plain' is not supported; send application/x-www-form-urlencoded (as Amplitude "
                   "clients do), multipart/form-data or application/json"}),
    Case("compressed body", Request(b"\x1f\x8b", FORM, "gzip"), 415,
         {"error": "Content-Encoding 'gzip' is not supported; send the body uncompressed"}),
    # too large
    Case("more identifications than allowed", Request(form(api_key=TOKEN, identification=[GOOD] * 4), FORM), 413,
         {"error": "Payload too large: 4 identifications, at most 3 per request"}),
    Case("more bytes than allowed", Request(b"x" * 4097, FORM), 413,
         {"error": "Payload too large: 4097 bytes, at most 4096 per request"}),
    Case("exactly the byte limit is fine",
         Request((form(api_key=TOKEN, identification=GOOD) + b"&pad=").ljust(4096, b"x"), FORM), 200, [GOOD]),
    # invalid records: all named, none accepted
    Case("one bad record refuses the request",
         Request(form(api_key=TOKEN, identification=[GOOD, {"user_id": "usr"}, GOOD2]), FORM), 400,
         {"error": "Request contains invalid identifications: 1 of 3; none was enqueued",
          "events_with_invalid_fields": {"user_id": [1]},
          "invalid_identifications": [{"index": 1, "field": "user_id", "rule": "too_short",
                                       "message": "must be at least 5 characters, got 3"}]}),
    Case("a record that is not an object", Request(form(api_key=TOKEN, identification=[GOOD, 7]), FORM), 400,
         {"events_with_invalid_fields": {"identification": [1]},
          "invalid_identifications": [{"index": 1, "field": "", "rule": "not_object",
                                       "message": "must be a JSON object, got number"}]}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = decide(case.request, case.settings)
    if case.status == 200:
        assert isinstance(decision, Accept), decision
        assert [orjson.loads(r.data) for r in decision.records] == case.expect
        assert decision.payload_bytes == len(case.request.body)
        return
    assert isinstance(decision, Answer)
    assert decision.status == case.status, decision.body
    assert decision.body["code"] == case.status
    assert isinstance(case.expect, dict)
    for key, expected in case.expect.items():
        if isinstance(expected, str) and expected.endswith("..."):  # the rest is the JSON parser's wording
            assert str(decision.body.get(key)).startswith(expected[:-3]), decision.body
        else:
            assert decision.body.get(key) == expected, decision.body


# Pieces that make escapes next to escapes, half escapes, escaped percents and hex digits likely.
PIECES = ["%", "%2", "%4", "2", "5", "1", "A", "f", "%22", "%25", "%41", "%3A", "%3a", "%7B", "%20", "%ZZ", "+", "x",
          "\u00e9", "%C3%A9"]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_unquote_form_decodes_as_the_standard_library_does(text: str) -> None:
    raw = text.encode()
    assert unquote_form(raw) == unquote_to_bytes(raw.replace(b"+", b" "))


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_unquote_form_reverses_urlencode(text: str) -> None:
    for encoder in (quote_plus, quote):
        assert unquote_form(encoder(text, safe="").encode()) == text.encode()


def test_form_fields_read_as_parse_qs_does() -> None:
    body = form(api_key=TOKEN, identification=[GOOD, GOOD2]) + b"&&empty=&bare&a+b=c%2Bd"
    expected = {k: [v.encode() for v in vs] for k, vs in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert form_fields(body) == expected


def test_refusals_never_quote_a_token() -> None:
    for case in CASES:
        decision = decide(case.request, case.settings)
        if isinstance(decision, Answer):
            assert TOKEN not in decision.encode().decode() and OTHER not in decision.encode().decode(), case.name


def test_401_asks_for_a_bearer_token() -> None:
    answer = decide(Request(form(identification=GOOD), FORM), SETTINGS)
    assert isinstance(answer, Answer)
    assert answer.headers == (("WWW-Authenticate", 'Bearer realm="identify-queue"'),)


def test_records_are_validated_with_the_queue_limits() -> None:
    # Given a queue configured for ids of at least 12 characters and records of at most 300 bytes
    settings = IngestSettings(queue=QueueConfig(min_id_length=12, max_record_bytes=300), token_digests=None)
    big = {"user_id": "user-000000001", "user_properties": {"$set": {"bio": "x" * 300}}}
    # When records break those limits (and only those)
    answer = decide(Request(form(identification=[GOOD, big]), FORM), settings)
    # Then both are named, for the queue's limits
    assert isinstance(answer, Answer)
    assert [(e["index"], e["rule"]) for e in answer.body["invalid_identifications"]] == [(0, "too_short"),
                                                                                        (1, "too_large")]  # fmt: skip


INVALID_CASES = [
    # rule, field path -> Amplitude-style map it lands in
    (InvalidRecord("user_id", "too_short", "m"), "events_with_invalid_fields", {"user_id": [0]}),
    (InvalidRecord("user_properties.$set.plan", "too_long", "m"), "events_with_invalid_fields",
     {"user_properties": [0]}),
    (InvalidRecord("groups.org[2]", "not_string", "m"), "events_with_invalid_fields", {"groups": [0]}),
    (InvalidRecord("user.name", "unknown_field", "m"), "events_with_invalid_fields", {"user.name": [0]}),
    (InvalidRecord("", "too_large", "m"), "events_with_invalid_fields", {"identification": [0]}),
    (InvalidRecord("", "missing_id", "m"), "events_with_missing_fields", {"user_id": [0], "device_id": [0]}),
]  # fmt: skip


@pytest.mark.parametrize(("error", "key", "expected"), INVALID_CASES, ids=[c[0].rule for c in INVALID_CASES])
def test_invalid_records_map_to_amplitude_fields(error: InvalidRecord, key: str, expected: dict[str, Any]) -> None:
    answer = answer_invalid([error.at(0)], 1)
    assert answer.status == 400
    assert answer.body[key] == expected
    other = ({"events_with_invalid_fields", "events_with_missing_fields"} - {key}).pop()
    assert other not in answer.body
    assert answer.body["invalid_identifications"] == [{"index": 0, "field": error.field, "rule": error.rule,
                                                       "message": "m"}]  # fmt: skip


def test_invalid_indices_collect_per_field_in_order() -> None:
    errors = [InvalidRecord("user_id", "too_short", "m", 1), InvalidRecord("groups", "not_object", "m", 4),
              InvalidRecord("user_id", "reserved_id", "m", 7)]  # fmt: skip
    assert answer_invalid(errors, 9).body["events_with_invalid_fields"] == {"user_id": [1, 7], "groups": [4]}


FAILURES = [
    (QueueFull(95, 100), 503, "Queue full (95 of 100 records queued): nothing was enqueued, retry later", True),
    (StoreError("enqueue: Redis is unreachable (refused)"), 503,
     "Queue unavailable (Redis cannot be reached): the records may not have been enqueued, retry later", True),
    (QueueMismatch("16 shards vs 8"), 500, "The ingest endpoint is misconfigured (queue layout); see its log", False),
    (ConfigError("?"), 500, "Internal error; see the endpoint's log", False),
]  # fmt: skip


@pytest.mark.parametrize(("error", "status", "message", "retry"), FAILURES, ids=[type(f[0]).__name__ for f in FAILURES])
def test_enqueue_failures(error: Any, status: int, message: str, retry: bool) -> None:
    answer = answer_failure(error, 7)
    assert (answer.status, answer.body["code"], answer.body["error"]) == (status, status, message)
    assert answer.headers == ((("Retry-After", "7"),) if retry else ())


ROUTES = [
    ("POST", "/identify", Route.IDENTIFY),
    ("GET", "/healthz", Route.HEALTH),
    ("GET", "/identify", 405),
    ("PUT", "/identify", 405),
    ("POST", "/healthz", 405),
    ("POST", "/identify/", 404),
    ("POST", "/", 404),
    ("GET", "/2/httpapi", 404),
]


@pytest.mark.parametrize(("method", "path", "expected"), ROUTES)
def test_route(method: str, path: str, expected: Route | int) -> None:
    result = route(method, path)
    if isinstance(expected, Route):
        assert result is expected
    else:
        assert isinstance(result, Answer)
        assert result.status == expected
        if expected == 405:
            assert dict(result.headers)["Allow"] in ("POST", "GET")


AS_IDENTIFICATION: list[tuple[Any, Any, tuple[str, ...]]] = [
    # what a client sent, the identification enqueued, the fields dropped
    ({"user_id": "user-42"}, {"user_id": "user-42"}, ()),
    ({"user_id": "user-42", "event_properties": {"a": 1}, "session_id": 17, "time": 5},
     {"user_id": "user-42"}, ("event_properties", "session_id", "time")),
    ({"userId": "user-42", "userProperties": {"$set": {"a": 1}}, "sessionId": 1, "osName": "iOS"},
     {"user_id": "user-42", "user_properties": {"$set": {"a": 1}}, "os_name": "iOS"}, ("sessionId",)),
    ({"device_id": "dev-0001", "location_lat": 1.5, "location_lng": 2.5, "ip": "$remote", "insert_id": "x"},
     {"device_id": "dev-0001"}, ("location_lat", "location_lng", "ip", "insert_id")),
    ({"user_id": "user-42", "emial": "x"}, {"user_id": "user-42", "emial": "x"}, ()),  # validate refuses it
    ([1], [1], ()),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "enqueued", "dropped"), AS_IDENTIFICATION)
def test_what_clients_send_becomes_the_identification_amplitude_reads(sent: Any, enqueued: Any,
                                                                      dropped: tuple[str, ...]) -> None:  # fmt: skip
    assert as_identification(sent) == (enqueued, dropped)


@pytest.mark.parametrize("sent", [{"userId": "user-42", "user_id": "user-43"}, {"user_id": "user-43", "userId": "u"}])
def test_a_field_in_both_spellings_is_refused(sent: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord) as caught:
        as_identification(sent)
    assert (caught.value.field, caught.value.rule) == ("user_id", "duplicate_field")


def test_event_fields_are_dropped_and_counted_and_an_unknown_field_is_refused_with_its_index() -> None:
    settings = IngestSettings(token_digests=None)
    records = [{"user_id": f"user-{i:03d}", "event_properties": {"a": i}} for i in range(3)]
    body = urlencode({"identification": orjson.dumps([*records, {"user_id": "user-999", "session_id": 1}]).decode()})
    decision = decide(Request(body.encode()), settings)
    assert isinstance(decision, Accept)
    assert dict(decision.ignored) == {"event_properties": 3, "session_id": 1}
    assert orjson.loads(decision.records[0].data) == {"user_id": "user-000"}
    bad = urlencode({"identification": orjson.dumps([records[0], {"user_id": "user-1", "emial": "x"}]).decode()})
    refused = decide(Request(bad.encode()), settings)
    assert isinstance(refused, Answer) and refused.status == 400
    assert refused.body["invalid_identifications"][0]["index"] == 1
    assert refused.body["invalid_identifications"][0]["field"] == "emial"
