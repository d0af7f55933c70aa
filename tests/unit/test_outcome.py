"""What an answer from /identify means: a table of real-shaped answers."""

from __future__ import annotations

import pytest

from worker.drain.outcome import Verdict, classify, classify_error, parse_retry_after
from worker.errors import SinkConnectionError, SinkTimeout

J = {"content-type": "application/json"}

TABLE = [
    # status, headers, body, batch size, verdict
    (200, J, b'{"code":200,"events_ingested":3,"payload_size_bytes":120,"server_upload_time":1}', 3, Verdict.ACCEPTED),
    (200, {}, b"success", 3, Verdict.ACCEPTED),
    (200, {}, b'"success"', 3, Verdict.ACCEPTED),
    (202, {}, b"", 3, Verdict.ACCEPTED),
    (400, J, b'{"code":400,"error":"Invalid API key: 0123456789abcdef"}', 3, Verdict.CONFIG_ERROR),
    (400, J, b'{"code":400,"error":"Request missing required field","missing_field":"api_key"}', 3,
     Verdict.CONFIG_ERROR),
    (400, J, b'{"code":400,"error":"Request missing required field","missing_field":"identification"}', 3,
     Verdict.CONFIG_ERROR),
    (400, {}, b"invalid api_key", 3, Verdict.CONFIG_ERROR),
    (400, J, b'{"code":400,"error":"Request contains invalid events","events_with_invalid_fields":{"user_id":[1]}}', 3,
     Verdict.INVALID),
    (400, J, b'{"code":400,"events_with_missing_fields":{"user_id":[0,2]}}', 3, Verdict.INVALID),
    (400, J, b'{"code":400,"error":"silenced","silenced_events":[2]}', 3, Verdict.INVALID),
    (400, J, b'{"code":400,"error":"Invalid request"}', 3, Verdict.UNNAMED_INVALID),
    (400, J, b'{"code":400,"events_with_invalid_fields":{"user_id":[7]}}', 3, Verdict.UNNAMED_INVALID),  # out of range
    (400, {}, b"<html>bad request</html>", 3, Verdict.UNNAMED_INVALID),
    (413, J, b'{"code":413,"error":"Payload too large"}', 3, Verdict.TOO_LARGE),
    (429, J, b'{"code":429,"error":"Too many requests for some devices and users","eps_threshold":10,'
              b'"throttled_users":{"user-00001":12},"throttled_events":[0]}', 3, Verdict.THROTTLED),
    (429, {"retry-after": "15"}, b"", 3, Verdict.THROTTLED),
    (500, J, b'{"code":500,"error":"internal"}', 3, Verdict.RETRY),
    (502, {}, b"<html>Bad Gateway</html>", 3, Verdict.RETRY),
    (503, {"retry-after": "7"}, b"", 3, Verdict.RETRY),
    (504, {}, b"", 3, Verdict.RETRY),
    (408, {}, b"", 3, Verdict.RETRY),
    (401, {}, b"unauthorized", 3, Verdict.CONFIG_ERROR),
    (403, {}, b"forbidden", 3, Verdict.CONFIG_ERROR),
    (404, {}, b"not found", 3, Verdict.CONFIG_ERROR),
    (301, {"location": "https://elsewhere"}, b"", 3, Verdict.CONFIG_ERROR),
]  # fmt: skip


@pytest.mark.parametrize(("status", "headers", "body", "size", "verdict"), TABLE)
def test_classify(status: int, headers: dict[str, str], body: bytes, size: int, verdict: Verdict) -> None:
    assert classify(status, headers, body, size).verdict is verdict


def test_invalid_names_each_index_with_its_reason() -> None:
    body = (
        b'{"code":400,"events_with_invalid_fields":{"user_id":[1,2],"groups":[2]},'
        b'"events_with_missing_fields":{"device_id":[4]},"silenced_events":[0]}'
    )
    outcome = classify(400, J, body, 5)
    assert outcome.invalid == {
        0: "silenced device",
        1: "invalid field user_id",
        2: "invalid field user_id",
        4: "missing field device_id",
    }


def test_throttled_names_users_devices_and_indices() -> None:
    body = b'{"code":429,"throttled_users":{"u1":5},"throttled_devices":{"d1":3},"throttled_events":[0,9,2]}'
    outcome = classify(429, {"retry-after": "20"}, body, 5)
    assert outcome.throttled_users == {"u1"}
    assert outcome.throttled_devices == {"d1"}
    assert outcome.throttled_indices == {0, 2}
    assert outcome.retry_after_s == 20


def test_a_throttle_naming_nobody_means_everybody() -> None:
    outcome = classify(429, {}, b"Too Many Requests", 5)
    assert not (outcome.throttled_users or outcome.throttled_devices or outcome.throttled_indices)


def test_errors_without_an_answer_are_retried() -> None:
    assert classify_error(SinkTimeout("slow")).verdict is Verdict.RETRY
    assert classify_error(SinkConnectionError("refused")).verdict is Verdict.RETRY


def test_the_excerpt_is_bounded() -> None:
    assert len(classify(500, {}, b"x" * 100_000, 1).excerpt) == 500


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("15", 15.0), (" 2.5 ", 2.5), ("-3", 0.0), ("99999", 3600.0), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)],
)  # fmt: skip
def test_retry_after(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # 10 s before the date above
    assert parse_retry_after(value, now=now) == seconds
