"""`identify-queue local-amplitude` and `identify-queue demo`: the local servers and the end-to-end demo."""

from __future__ import annotations

import os
import sys

import click
import orjson

from producers.contract.errors import ConfigError
from worker.cli.common import friendly_errors


# -- local stack ------------------------------------------------------------------------------------
@click.command("local-amplitude")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8089, show_default=True, help="0 picks a free port.")
@click.option(
    "--api-key-env",
    metavar="VAR",
    default=None,
    help="Accept only the API key held in this environment variable (default: any key).",
)
@click.option("--faults", metavar="JSON", default=None,
              help="Start misbehaving at once, as POST /_control would make it (for tests).")  # fmt: skip
@click.option("--keep-records", type=click.IntRange(0), default=1_000_000, show_default=True,
              help="Accepted records kept for /_accepted, /_arrivals, /_users (0: all, memory grows).")  # fmt: skip
@friendly_errors
def local_amplitude(host: str, port: int, api_key_env: str | None, faults: str | None, keep_records: int) -> None:
    """Run a local Amplitude-compatible /identify endpoint (for the demo and tests).

    \b
    POST /identify   what Amplitude's Identify API takes, with its answers
    POST /_control   misbehave: {"statuses": [500], "fail_rate": 0.3, "hang": true, "delay_ms": 50, ...}
    POST /_reset     forget everything; GET /_stats, /_accepted, /_users/ID: what it received
    """
    from worker.devtools.local_amplitude import serve

    api_key = os.environ.get(api_key_env) if api_key_env else None
    if faults:
        try:
            orjson.loads(faults)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--faults") from None

    def ready(bound: int) -> None:
        click.echo(f"listening on http://{host}:{bound}", nl=True)
        sys.stdout.flush()

    try:
        serve(host, port, api_key or None, ready=ready, faults=faults.encode() if faults else None,
              keep_records=keep_records)  # fmt: skip
    except OSError as exc:  # binding the port is the only I/O before it serves
        raise ConfigError(f"cannot listen on {host}:{port} (--host/--port): {exc.strerror or exc}") from None


@click.command()
@click.option(
    "--users",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Users to update (default 2000 locally, 3 against Amplitude).",
)
@click.option("--updates", type=click.IntRange(1, 1000), default=10, show_default=True, help="Updates per user.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes.")
@friendly_errors
def demo(users: int | None, updates: int, concurrency: int) -> None:
    """Run the whole job end to end and show what was delivered.

    Starts a private Redis unless REDIS_URL is set, and the local Amplitude-compatible server
    unless AMPLITUDE_API_KEY is set; enqueues USERS x UPDATES identifications, runs a worker until
    everything is delivered, then checks each user's order and prints a summary.
    """
    from worker.devtools.demo import run_demo

    sys.exit(run_demo(users=users, updates=updates, concurrency=concurrency))
