"""`identify-queue serve`: the HTTP ingest endpoint."""

from __future__ import annotations

import sys

import click

from worker.cli.common import friendly_errors


# -- HTTP ingest ------------------------------------------------------------------------------------
@click.command()
@click.option(
    "--host",
    default=None,
    help="Address to listen on (default: IDENTIFY_INGEST_HOST, else 127.0.0.1). 0.0.0.0 listens on every "
    "interface: for containers, behind a proxy that terminates TLS.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port (default: IDENTIFY_INGEST_PORT, else 8090); 0 picks a free one.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Request threads (default: IDENTIFY_INGEST_THREADS, else 4).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Accept requests without a token. Only where nothing untrusted can reach the port; "
    "refused if IDENTIFY_INGEST_TOKEN is set.",
)
@friendly_errors
def serve(host: str | None, port: int | None, threads: int | None, insecure_no_auth: bool) -> None:
    """Accept identifications over HTTP, in Amplitude's /identify format, and enqueue them.

    \b
    POST /identify   form-encoded (as Amplitude clients send), multipart/form-data, or JSON:
                       api_key=TOKEN&identification=<one JSON object or an array>
                       {"api_key": "TOKEN", "identification": [...]}
                     the token may come as "Authorization: Bearer TOKEN" instead of api_key
    GET  /healthz    200 while Redis answers, else 503

    \b
    Answers, Amplitude-shaped JSON:
      200  every record validated and durably queued ({"events_ingested": N, ...})
      400  invalid records (each named by index, field, rule), nothing of the request queued;
           or a malformed request (not JSON, no identification)
      401  no token; 403 wrong token
      413  body over IDENTIFY_INGEST_MAX_BODY_BYTES (1 MB) or over IDENTIFY_INGEST_MAX_RECORDS (2000)
      503  queue full (IDENTIFY_MAX_QUEUED) or Redis unreachable, with Retry-After

    \b
    Configuration (besides REDIS_URL and IDENTIFY_*, which must match the workers'):
      IDENTIFY_INGEST_TOKEN              required: the token clients send (16+ characters;
                                         several, comma-separated, while rotating)
      IDENTIFY_INGEST_HOST / _PORT       127.0.0.1 / 8090
      IDENTIFY_INGEST_THREADS            4
      IDENTIFY_INGEST_MAX_BODY_BYTES     1000000
      IDENTIFY_INGEST_MAX_RECORDS        2000
      IDENTIFY_INGEST_IDLE_TIMEOUT_S     30     an idle connection is closed after this
      IDENTIFY_INGEST_CONNECTION_LIMIT   100
      IDENTIFY_INGEST_RETRY_AFTER_S      10     Retry-After of a 503

    Prints "listening on URL" on stdout once ready; logs go to stderr and never contain the token
    or a request body. SIGTERM finishes the requests in progress and stops.
    """
    from producers.ingest.server import run

    def ready(urls: list[str]) -> None:
        click.echo(f"listening on {urls[0]}")
        sys.stdout.flush()

    run(host=host, port=port, threads=threads, insecure_no_auth=insecure_no_auth, ready=ready)
