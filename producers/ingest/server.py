"""The HTTP ingest endpoint's I/O: a WSGI application around ``producers.ingest.decide``, served by waitress.

``IngestApp`` reads a request, lets ``ingest.decide`` judge it, enqueues what it accepts with the
producer's script (all records of a request in one atomic call) and answers only once Redis has
them.  ``serve`` runs it on waitress: pure Python, a thread pool for the application, and an event
loop that reads whole requests before a thread sees them, so a slow client holds no thread.
waitress is imported there and only there, so ``import producers`` stays light.

Neither the token nor a request body is ever logged: log lines carry the status, the client's
address and the answer's own message, which the decisions write without quoting credentials.
Whatever of a request is logged (method, path, address, a message quoting a header) is escaped
and cut first, so a request cannot write a line of its own into the log.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from producers.contract import logs
from producers.contract.connection import describe
from producers.contract.entry import now_ms
from producers.contract.errors import ConfigError, QueueFull, QueueMismatch, RequestRefused, StoreError
from producers.contract.logs import printable
from producers.ingest.decide import (
    Accept,
    Answer,
    Request,
    Route,
    answer_accepted,
    answer_failure,
    answer_health,
    answer_internal,
    answer_refused,
    check_size,
    decide,
    route,
)
from producers.ingest.settings import IngestSettings
from producers.producer import IdentifyProducer

log = logging.getLogger("identify_queue.ingest")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class IngestApp:
    """The WSGI application: one per process, shared by waitress's threads (the producer is thread-safe)."""

    def __init__(self, settings: IngestSettings, producer: IdentifyProducer) -> None:
        self.settings = settings
        self.producer = producer

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        try:
            target = route(method, path)
            if isinstance(target, Answer):
                answer = target
            elif target is Route.HEALTH:
                answer = answer_health(self._redis_ok())
            else:
                answer = self._identify(environ)
        except Exception:
            log.exception("%s %s: unexpected error", printable(method, 20), printable(path))
            answer = answer_internal()
        self._log(environ, method, path, answer)
        body = answer.encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *answer.headers]
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        return [body]

    def _identify(self, environ: dict[str, Any]) -> Answer:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            check_size(length, self.settings.max_body_bytes)
        except RequestRefused as refused:
            return answer_refused(refused)
        body: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
        request = Request(
            body,
            content_type=environ.get("CONTENT_TYPE", ""),
            content_encoding=environ.get("HTTP_CONTENT_ENCODING", ""),
            authorization=environ.get("HTTP_AUTHORIZATION", ""),
        )
        decision = decide(request, self.settings)
        if not isinstance(decision, Accept):
            return decision
        try:
            count = self.producer.enqueue_valid(decision.records)
        except (QueueFull, StoreError, QueueMismatch) as exc:
            if not isinstance(exc, QueueFull):
                log.error("enqueue failed: %s", exc)
            return answer_failure(exc, self.settings.retry_after_s)
        return answer_accepted(count, decision.payload_bytes, now_ms(), decision.ignored)

    def _redis_ok(self) -> bool:
        try:
            self.producer.queued()
        except StoreError as exc:
            log.warning("health check: %s", exc)
            return False
        return True

    @staticmethod
    def _log(environ: dict[str, Any], method: str, path: str, answer: Answer) -> None:
        # Every part that comes from the request is escaped and cut (logs.printable): a path with
        # %0A would otherwise write a line of the client's choosing into the log.
        client = printable(environ.get("REMOTE_ADDR", "-"))
        method, path = printable(method, 20), printable(path)
        if answer.status < 300:
            if path != "/healthz":
                log.debug("%s %s %d from %s: %s", method, path, answer.status, client,
                          answer.body.get("events_ingested"))  # fmt: skip
            return
        log.info("%s %s %d from %s: %s", method, path, answer.status, client, printable(answer.body.get("error"), 300))


def run(
    *,
    host: str | None,
    port: int | None,
    threads: int | None,
    insecure_no_auth: bool,
    ready: Callable[[list[str]], None] | None = None,
) -> None:
    """``identify-queue serve``: settings from the environment (the options win), logs on stderr."""
    settings = IngestSettings.from_env(insecure_no_auth=insecure_no_auth, host=host, port=port, threads=threads)
    logs.configure(settings.log_level, settings.log_format)
    serve(settings, ready)


def serve(
    settings: IngestSettings,
    ready: Callable[[list[str]], None] | None = None,
    app_type: type[IngestApp] = IngestApp,
) -> None:
    """Serve until SIGTERM or SIGINT; ``ready`` gets the URLs listened on (useful with port 0).

    ``app_type`` lets the benchmark run its baseline application on exactly this server stack.

    On a stop, requests being handled are finished (waitress waits up to 5 s); a client whose
    answer is then cut off does not know whether its records were enqueued, and retries: records
    are accepted at least once, as Amplitude's own 5xx answers imply.
    """
    from waitress.server import create_server

    producer = IdentifyProducer(settings.queue)
    app = app_type(settings, producer)
    try:
        server = create_server(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            ident="identify-queue",
            max_request_body_size=settings.server_body_limit,
            channel_timeout=settings.idle_timeout_s,
            connection_limit=settings.connection_limit,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        producer.close()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} (IDENTIFY_INGEST_HOST/PORT, --host/--port): "
            f"{exc.strerror or exc}"
        ) from None
    urls = [_url(host, port) for host, port in _listening(server)]
    log.info(
        "ingest endpoint on %s, queue %s namespace %s, %d threads, authentication %s",
        ", ".join(urls), describe(settings.queue.redis_url), settings.queue.namespace, settings.threads,
        "OFF (--insecure-no-auth)" if settings.token_digests is None else "by token",
    )  # fmt: skip
    if settings.token_digests is None:
        log.warning("--insecure-no-auth: anyone who can reach %s can enqueue identifications", ", ".join(urls))
    # waitress's loop stops cleanly on SystemExit; the default SIGTERM would kill mid-request.
    signal.signal(signal.SIGTERM, _exit)
    if ready is not None:
        ready(urls)
    try:
        server.run()
    finally:
        producer.close()
        log.info("ingest endpoint stopped")


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _listening(server: Any) -> list[tuple[str, int]]:
    """Where waitress listens: one socket, or several when the host name resolves to several."""
    if hasattr(server, "effective_listen"):
        return [(str(h), int(p)) for h, p in server.effective_listen]
    return [(str(server.effective_host), int(server.effective_port))]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
