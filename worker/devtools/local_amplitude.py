"""A local Amplitude-compatible Identify endpoint, for the demo, the tests and the benchmarks.

``POST /identify`` takes what Amplitude takes (form-encoded ``api_key`` and ``identification``,
one object or an array; or the same two fields as a JSON body), validates each identification with
the rules in ``producers/record.py``, and answers with Amplitude's codes and bodies: 200 JSON, 400
naming the indices of invalid records (or an invalid API key), 413 above 1 MB or 2,000 items.
Accepted identifications are kept in arrival order, the last ``keep_records`` of them (1,000,000 by
default, ``--keep-records``; 0 keeps every one), and the last 100,000 requests' lines: its memory
stays bounded however long it runs, while the checks of a test or a benchmark run (which read
fewer) see everything.  Counts (accepted, requests, statuses) cover the whole run.

It can be told to misbehave, so the worker's remedies can be tested against real HTTP:

    POST /_control   {"statuses": [500, 500], "fail_rate": 0.3, "hang": true, "hang_users": ["u9"],
                      "delay_ms": 50,
                      "max_body_bytes": 20000, "invalid_key": true, "reject_users": ["u1"],
                      "reject_properties": ["p"],
                      "name_invalid": false, "throttle_users": {"u2": 3.0}, "name_throttled": true,
                      (a user's throttle lasts that many seconds from the first request naming it)
                      "seed": 7}
    POST /_reset     forget everything (state, log, faults)
    GET  /_stats     counts, statuses, accepted records, requests received and in progress
    GET  /_accepted?since=N&limit=M   accepted identifications (JSON Lines), in arrival order; N
                     counts from the first ever accepted (records no longer kept are skipped)
    GET  /_requests  one line per request kept: time, status, records, bytes
    GET  /_arrivals  [time received, user] per accepted record kept, in arrival order
    GET  /_users/ID  the user's properties as Amplitude would hold them (from the records kept)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from producers.contract.errors import InvalidRecord
from producers.record import check
from worker.drain import amplitude_model

log = logging.getLogger("identify_queue.local_amplitude")

MAX_ITEMS = 2000
MAX_BODY = 1_000_000
#: Accepted records kept by default: a benchmark's run (200,000) with room to spare, about 150 MB.
KEEP_RECORDS = 1_000_000
#: Requests whose line (/_requests) is kept.
KEEP_REQUESTS = 100_000
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Faults:
    """What the server is told to do wrong; every field off by default."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        spec = spec or {}
        self.statuses: list[int] = [int(s) for s in spec.get("statuses", [])]
        self.fail_rate = float(spec.get("fail_rate", 0.0))
        self.hang = bool(spec.get("hang", False))
        self.hang_users = [str(u).encode() for u in spec.get("hang_users", [])]
        self.delay_s = float(spec.get("delay_ms", 0)) / 1000
        self.max_body_bytes = int(spec.get("max_body_bytes", MAX_BODY))
        self.invalid_key = bool(spec.get("invalid_key", False))
        self.reject_users = set(spec.get("reject_users", []))
        self.name_invalid = bool(spec.get("name_invalid", True))
        # a user's throttle starts with the first request that names it, not when it is set
        self.throttle_for = {u: float(s) for u, s in dict(spec.get("throttle_users", {})).items()}
        self.throttle_until: dict[str, float] = {}
        self.reject_properties = set(spec.get("reject_properties", []))
        self.name_throttled = bool(spec.get("name_throttled", True))
        self.random = random.Random(spec.get("seed", 0))


@dataclass(frozen=True)
class Batch:
    """An accepted request's identification array as it came; ``first``: the arrival index of its
    first record, counted over the whole run."""

    text: bytes
    count: int
    received: float
    first: int


class LocalAmplitude:
    def __init__(self, api_key: str | None = None, min_id_length: int = 5, keep_records: int = KEEP_RECORDS) -> None:
        """``keep_records``: accepted records kept for inspection (0: all)."""
        self.api_key = api_key
        self.min_id_length = min_id_length
        self.keep_records = keep_records
        self._lock = threading.Lock()
        self._unhang = threading.Condition(self._lock)
        # Answers are computed one at a time: the work is all Python (GIL-bound), and two threads
        # validating at once only trade the GIL back and forth, which doubled the CPU per record.
        self._serial = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.faults = Faults()
        # Each accepted request's identification array as it came. Records are split out (and
        # users' states replayed) only when a test asks: the hot path then costs what Amplitude's
        # would, and 200,000 retained small objects do not fragment the heap (that made the server
        # three times slower by the end of a benchmark). The oldest go once more are kept than
        # keep_records: what grew to 17 GB over a long session.
        self.batches: deque[Batch] = deque()
        self.kept = 0
        self.accepted_count = 0
        self.requests: deque[tuple[float, int, int, int]] = deque(maxlen=KEEP_REQUESTS)
        self.request_count = 0
        self.max_request_bytes = 0
        self.statuses: Counter[int] = Counter()
        self.in_progress = 0
        self.received = 0
        self.started = time.time()

    # -- WSGI ---------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        try:
            if path == "/identify" and method == "POST":
                status, body = self.identify(_read(environ), environ.get("CONTENT_TYPE", ""))
            elif path == "/_control" and method == "POST":
                status, body = self.control(_read(environ))
            elif path == "/_reset" and method == "POST":
                with self._lock:
                    self._reset()
                    self._unhang.notify_all()
                status, body = 200, b'{"reset":true}'
            elif path == "/_stats":
                status, body = 200, orjson.dumps(self.stats())
            elif path == "/_accepted":
                query = parse_qs(environ.get("QUERY_STRING", ""))
                status, body = 200, self.accepted_lines(int(query.get("since", ["0"])[0]),
                                                         int(query.get("limit", ["1000000"])[0]))  # fmt: skip
            elif path == "/_arrivals":
                status, body = 200, orjson.dumps(self.arrivals())
            elif path == "/_requests":
                with self._lock:
                    status, body = 200, orjson.dumps(list(self.requests))
            elif path.startswith("/_users/"):
                state = self.user_state(unquote(path.removeprefix("/_users/")))
                status, body = (200, orjson.dumps(state)) if state is not None else (404, b'{"error":"no such user"}')
            elif path == "/" and method == "GET":
                status, body = 200, b'{"service":"identify-queue local Amplitude","endpoint":"/identify"}'
            else:
                status, body = 404, b'{"code":404,"error":"not found"}'
        except Exception:
            log.exception("local amplitude: error handling %s %s", method, path)
            status, body = 500, b'{"code":500,"error":"internal error"}'
        start_response(f"{status} {_phrase(status)}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]

    # -- /identify ----------------------------------------------------------------------------
    def identify(self, raw: bytes, content_type: str) -> tuple[int, bytes]:
        received = time.monotonic()
        with self._lock:
            self.in_progress += 1
            self.received += 1
        try:
            return self._identify(raw, content_type, received)
        finally:
            with self._lock:
                self.in_progress -= 1

    def _identify(self, raw: bytes, content_type: str, received: float) -> tuple[int, bytes]:
        with self._lock:
            # A held request is answered by whatever faults are set when it is let go, so a test
            # can hold requests, kill their client, and then fail them (not applied) with a 503.
            while self.faults.hang or self._holds_hung_user(raw):
                self._unhang.wait(0.5)
            faults = self.faults
            forced = faults.statuses.pop(0) if faults.statuses else None
            failed = forced is None and faults.fail_rate > 0 and faults.random.random() < faults.fail_rate
        if faults.delay_s:
            time.sleep(faults.delay_s)  # the fault being simulated is a slow server
        with self._serial:
            status, body, count = self._answer(
                raw, content_type, faults, forced=forced, failed=failed, received=received
            )
        with self._lock:
            self.requests.append((received, status, count, len(raw)))
            self.request_count += 1
            self.max_request_bytes = max(self.max_request_bytes, len(raw))
            self.statuses[status] += 1
        return status, body

    def _holds_hung_user(self, raw: bytes) -> bool:
        return any(user in raw for user in self.faults.hang_users)

    def _answer(
        self, raw: bytes, content_type: str, faults: Faults, *, forced: int | None, failed: bool, received: float
    ) -> tuple[int, bytes, int]:
        if forced is not None and forced != 200:
            return forced, orjson.dumps({"code": forced, "error": "forced by /_control"}), 0
        if failed:
            return 500, b'{"code":500,"error":"internal server error"}', 0
        if len(raw) > min(MAX_BODY, faults.max_body_bytes):
            return 413, b'{"code":413,"error":"Payload too large"}', 0
        try:
            api_key, identification, items = _parse_request(raw, content_type)
        except ValueError as exc:
            return 400, orjson.dumps({"code": 400, "error": f"Invalid request: {exc}"}), 0
        if not api_key:
            return 400, b'{"code":400,"error":"Request missing required field","missing_field":"api_key"}', 0
        if faults.invalid_key or (self.api_key is not None and api_key != self.api_key):
            # Echo the key, as some APIs do: the worker must keep it out of logs and Redis anyway.
            return 400, orjson.dumps({"code": 400, "error": f"Invalid API key: {api_key}"}), 0
        if len(items) > MAX_ITEMS:
            return 413, b'{"code":413,"error":"Payload too large"}', len(items)
        throttled = self._throttled(items, faults)
        if throttled is not None:
            return 429, throttled, len(items)
        return self._accept(items, identification, faults, received)

    def _throttled(self, items: list[Any], faults: Faults) -> bytes | None:
        if not faults.throttle_for:
            return None
        now = time.monotonic()
        for item in items:
            key = str(item.get("user_id") or item.get("device_id")) if isinstance(item, dict) else ""
            if key in faults.throttle_for and key not in faults.throttle_until:
                faults.throttle_until[key] = now + faults.throttle_for[key]
        active = {u for u, until in faults.throttle_until.items() if until > now}
        if not active:
            return None
        users: dict[str, int] = {}
        indices = []
        for i, item in enumerate(items):
            uid = item.get("user_id") if isinstance(item, dict) else None
            did = item.get("device_id") if isinstance(item, dict) else None
            if uid in active or did in active:
                users[str(uid or did)] = users.get(str(uid or did), 0) + 1
                indices.append(i)
        if not users:
            return None
        doc: dict[str, Any] = {"code": 429, "error": "Too many requests for some devices and users"}
        if faults.name_throttled:
            doc.update(eps_threshold=10, throttled_users=users, throttled_events=indices)
        return orjson.dumps(doc)

    def _accept(
        self, items: list[Any], identification: bytes, faults: Faults, received: float
    ) -> tuple[int, bytes, int]:
        invalid: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            try:
                check(item, min_id_length=self.min_id_length)
                if isinstance(item, dict) and item.get("user_id") in faults.reject_users:
                    raise InvalidRecord("user_id", "rejected", "rejected by /_control")
                if faults.reject_properties and _names_a_property(item, faults.reject_properties):
                    raise InvalidRecord("user_properties", "rejected", "rejected by /_control")
            except InvalidRecord as exc:
                invalid.setdefault((exc.field or "identification").split(".")[0], []).append(i)
        if invalid:
            doc: dict[str, Any] = {"code": 400, "error": "Request contains invalid identifications"}
            if faults.name_invalid:
                doc["events_with_invalid_fields"] = invalid
            return 400, orjson.dumps(doc), len(items)
        with self._lock:
            self.batches.append(Batch(identification, len(items), received, self.accepted_count))
            self.accepted_count += len(items)
            self.kept += len(items)
            while self.keep_records and self.kept - self.batches[0].count >= self.keep_records:
                self.kept -= self.batches.popleft().count
        body = {"code": 200, "events_ingested": len(items), "payload_size_bytes": len(identification),
                "server_upload_time": int(time.time() * 1000)}  # fmt: skip
        return 200, orjson.dumps(body), len(items)

    # -- control and inspection ------------------------------------------------------------------
    def control(self, raw: bytes) -> tuple[int, bytes]:
        try:
            spec = orjson.loads(raw or b"{}")
            faults = Faults(spec)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return 400, orjson.dumps({"error": str(exc)})
        with self._lock:
            self.faults = faults
            self._unhang.notify_all()
        return 200, orjson.dumps({"faults": spec})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "accepted": self.accepted_count,
                "requests": self.request_count,
                "kept": self.kept,
                "in_progress": self.in_progress,
                "received": self.received,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "max_request_bytes": self.max_request_bytes,
                "uptime_s": time.time() - self.started,
            }

    def _kept(self, since: int = 0) -> list[Batch]:
        """The kept batches holding records from arrival index ``since`` on."""
        with self._lock:
            batches = list(self.batches)
        return [b for b in batches if b.first + b.count > since]

    def arrivals(self) -> list[tuple[float, str]]:
        """(time received, user_id or device_id) of every kept accepted record, in arrival order."""
        out = []
        for batch in self._kept():
            for record in orjson.loads(batch.text):
                out.append((batch.received, str(record.get("user_id") or record.get("device_id"))))
        return out

    def user_state(self, user: str) -> dict[str, Any] | None:
        """The user's properties as Amplitude would hold them: every kept update, replayed."""
        state: dict[str, Any] | None = None
        for batch in self._kept():
            if user.encode() not in batch.text:
                continue  # cheap: most batches do not name the user
            for record in orjson.loads(batch.text):
                if (record.get("user_id") or record.get("device_id")) == user:
                    state = amplitude_model.apply(state or {}, record)
        return state

    def accepted_lines(self, since: int, limit: int) -> bytes:
        """Kept records from arrival index ``since`` on, at most ``limit``, one JSON a line."""
        lines: list[bytes] = []
        for batch in self._kept(since):
            if len(lines) >= limit:
                break
            records = orjson.loads(batch.text)[max(0, since - batch.first) :]
            lines += [orjson.dumps(item) + b"\n" for item in records[: limit - len(lines)]]
        return b"".join(lines)


def _names_a_property(item: dict[str, Any], names: set[str]) -> bool:
    props = amplitude_model.operations(item.get("user_properties") or {})
    return any(name in names for body in props.values() if isinstance(body, dict) for name in body)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def _read(environ: dict[str, Any]) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
    return data


def _parse_request(raw: bytes, content_type: str) -> tuple[str, bytes, list[Any]]:
    """The API key, the identification JSON and its records, from an /identify request."""
    if content_type.startswith("application/json"):
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("JSON body must be an object")
        api_key, ident = doc.get("api_key", ""), doc.get("identification")
        text = orjson.dumps(ident)
    else:
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise ValueError("body is not UTF-8") from None
        api_key = (form.get("api_key") or form.get("api-key") or [""])[0]
        texts = form.get("identification")
        if not texts:
            raise ValueError("missing identification")
        text = texts[0].encode()
        try:
            ident = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"identification is not JSON: {exc}") from None
    if isinstance(ident, dict):
        return str(api_key), b"[" + text + b"]", [ident]
    if isinstance(ident, list):
        return str(api_key), text, ident
    raise ValueError("identification must be an object or an array")


def serve(
    host: str, port: int, api_key: str | None, *, threads: int = 8, ready: Callable[[int], None] | None = None,
    faults: bytes | None = None, keep_records: int = KEEP_RECORDS,
) -> None:  # fmt: skip
    """Serve until interrupted; ``ready`` is called with the bound port (useful with port 0)."""
    from waitress.server import create_server

    # waitress warns "Task queue depth is N" whenever requests wait for a thread: here that is a
    # worker's concurrency meeting 8 threads, expected and harmless, and dozens of lines a run
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    app = LocalAmplitude(api_key, keep_records=keep_records)
    if faults:
        app.control(faults)
    server = create_server(app, host=host, port=port, threads=threads, ident="local-amplitude", recv_bytes=1 << 20,
                           channel_timeout=300, connection_limit=1000)  # fmt: skip
    bound = int(server.effective_port)
    if ready is not None:
        ready(bound)
    server.run()
