"""`identify-queue console`: the operator's console in the browser."""

from __future__ import annotations

import sys

import click

from worker.cli.common import friendly_errors


@click.command()
@click.option("--host", default=None,
              help="Address to listen on (default: IDENTIFY_CONSOLE_HOST, else 127.0.0.1).")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: IDENTIFY_CONSOLE_PORT, else 8091); 0 picks a free one.")  # fmt: skip
@click.option("--read-only", is_flag=True, help="Show everything, refuse every replay and purge.")
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="No sign-in. Only where nothing untrusted can reach the port; refused if IDENTIFY_CONSOLE_TOKEN is set.",
)
@friendly_errors
def console(host: str | None, port: int | None, read_only: bool, insecure_no_auth: bool) -> None:
    """Serve the operator's console: overview, waiting users, dead letters with replay and purge.

    \b
    Pages:
      /               what is queued, in flight, held, deferred, dead-lettered, delivered;
                      whether sending is blocked; workers; the last hour per minute; each shard
      /waiting        users held after a 429 or deferred by the hourly budget, until when
      /dead-letters   dead letters by reason, user id prefix and failure time; replay and purge
                      (one, a selection, or a filter's result), each after a confirmation
      /api/overview   the overview as JSON (Authorization: Bearer TOKEN works here)

    \b
    Configuration (besides REDIS_URL and IDENTIFY_*, which must match the workers'):
      IDENTIFY_CONSOLE_TOKEN        required: operators sign in with it (16+ characters)
      IDENTIFY_CONSOLE_HOST/_PORT   127.0.0.1 / 8091
      IDENTIFY_CONSOLE_READ_ONLY    0      1: as --read-only
      IDENTIFY_CONSOLE_PAGE_SIZE    200    dead letters and waiting users listed per page
      IDENTIFY_CONSOLE_REFRESH_S    5      seconds between refreshes of the overview

    Prints "listening on URL" on stdout once ready. SIGTERM stops it.
    """
    from worker.console.server import run

    def ready(url: str) -> None:
        click.echo(f"listening on {url}")
        sys.stdout.flush()

    run(host=host, port=port, read_only=read_only, insecure_no_auth=insecure_no_auth, ready=ready)
