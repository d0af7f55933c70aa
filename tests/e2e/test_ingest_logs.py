"""`serve`'s logs cannot be forged: what a request carries is escaped and cut before it is logged.

A path with ``%0A`` once wrote a line of the client's choosing, NUL bytes reached the log, and a
long path made a 10,000-character line.  Each format (text, JSON) is checked against the real
server's log, after raw requests over loopback.
"""

from __future__ import annotations

import http.client
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from producers.contract.logs import printable
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_redis import LocalRedis

FORGED = "2026-01-01 00:00:00,000 INFO identify_queue.ingest: POST /identify 200 from 10.0.0.1: forged"
PATHS = [
    "/identify%0A" + FORGED.replace(" ", "%20"),
    "/x%0D%0A" + FORGED.replace(" ", "%20"),
    "/nul%00byte%1B[31m",
    "/" + "a" * 10_000,
]
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


PRINTABLE: list[tuple[str, int, str]] = [
    ("/identify", 200, "/identify"),
    ("/a\nb\rc\td", 200, "/a\\nb\\rc\\td"),
    ("nul\x00esc\x1b[31m", 200, "nul\\x00esc\\x1b[31m"),
    ("line\u2028sep", 200, "line\\u2028sep"),
    ("back\\slash", 200, "back\\\\slash"),
    ("café", 200, "café"),
    ("x" * 250, 200, "x" * 200 + "...(50 more)"),
    ("\n" * 150, 200, "\\n" * 100 + "...(50 more)"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "limit", "logged"), PRINTABLE)
def test_a_value_from_a_request_is_escaped_and_cut(value: str, limit: int, logged: str) -> None:
    assert printable(value, limit) == logged


def raw_requests(url: str) -> None:
    parts = urlsplit(url)
    for path in PATHS:
        for method in ("GET", "POST"):
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
            conn.request(method, path, body=b"" if method == "POST" else None)
            assert conn.getresponse().status in (404, 405)
            conn.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_request_paths_cannot_forge_or_flood_log_lines(redis_server: LocalRedis, tmp_path: Path,
                                                       log_format: str) -> None:  # fmt: skip
    env = {"REDIS_URL": redis_server.url, "IDENTIFY_NAMESPACE": f"logs-{secrets.token_hex(3)}",
           "IDENTIFY_INGEST_TOKEN": "logs-token-" + secrets.token_urlsafe(12), "IDENTIFY_LOG_LEVEL": "debug",
           "IDENTIFY_LOG_FORMAT": log_format}  # fmt: skip
    with IngestProcess(env, log_path=tmp_path / "serve.log") as server:
        raw_requests(server.url)
    raw = (tmp_path / "serve.log").read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw
    lines = [line for line in raw.decode().splitlines() if not line.startswith("listening on ")]
    requests_logged = [line for line in lines if " 40" in line]
    assert len(requests_logged) == 2 * len(PATHS), lines
    escaped = "/identify\\\\n2026-01-01" if log_format == "json" else "/identify\\n2026-01-01"
    assert any(escaped in line for line in lines)  # the forged line, escaped inside a real one
    for line in lines:
        assert len(line) < 600, line[:200]
        if log_format == "json":
            doc = orjson.loads(line)  # one object per line, each line one
            assert "forged" not in doc["message"] or "\\n" in doc["message"]
        else:
            assert TEXT_LINE.match(line), line  # no line the client wrote
