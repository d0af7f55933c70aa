"""The ``identify-queue`` command.

Exit codes, stable for scripts:
    0  success
    1  some input was rejected (each rejection is reported on stderr)
    2  usage or configuration error (the message names the flag or variable)
    3  the queue is full (IDENTIFY_MAX_QUEUED)
    4  Redis is unreachable or refused a command
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson

from producers.config import QueueConfig
from producers.entry import now_ms as entry_now_ms
from producers.errors import (
    ConfigError,
    ImportJobError,
    InvalidRecord,
    QueueFull,
    QueueMismatch,
    SourceError,
    StoreError,
)
from producers.keys import Keys
from producers.producer import IdentifyProducer
from producers.record import DEVICE_FIELDS
from producers.redis_conn import connect
from worker.deadletter import REASONS  # imports no Celery: every command may use it

EXIT_REJECTED, EXIT_CONFIG, EXIT_FULL, EXIT_STORE = 1, 2, 3, 4
F = TypeVar("F", bound=Callable[..., Any])

ENVIRONMENT_HELP = """
\b
Configuration comes from the environment (see README, "Configuration"):
  REDIS_URL                 redis://127.0.0.1:6379/0
  AMPLITUDE_API_KEY         the project's API key (the worker needs it)
  AMPLITUDE_IDENTIFY_URL    https://api2.amplitude.com/identify (AMPLITUDE_REGION=eu: the EU one)
  IDENTIFY_NAMESPACE        identify      prefix of every Redis key
  IDENTIFY_SHARDS           16            partitions by user (same value everywhere)
  IDENTIFY_BATCH_SIZE       1000          records per request (at most 2000)
  IDENTIFY_BATCH_MAX_BYTES  950000        bytes per request body (at most 1000000)
  IDENTIFY_BATCH_LINGER_MS  200           wait for more records before a partial batch
  IDENTIFY_MAX_QUEUED       10000000      producers get "queue full" past it
"""


def _friendly_errors(func: F) -> F:
    """Turn our errors into one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, QueueMismatch, ImportJobError) as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except QueueFull as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_FULL)
        except SourceError as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_REJECTED)
        except StoreError as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_STORE)

    return wrapper  # type: ignore[return-value]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=ENVIRONMENT_HELP
)
@click.version_option(package_name="identify-queue")
def main() -> None:
    """Deliver user-property updates to Amplitude's Identify API: durable, ordered per user,
    within Amplitude's limits.

    Producers validate and enqueue identifications into Redis (`enqueue`, `import`, the Python
    API); workers (`worker`) drain them in batches to POST /identify; `status` shows where
    everything is.
    """


# -- worker -----------------------------------------------------------------------------------------
@main.command()
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Worker processes (default: IDENTIFY_WORKER_CONCURRENCY, else the CPU count).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="Celery pool: processes use every core; threads suit a slow, distant endpoint.",
)
@click.option("-n", "--name", default=None, help="Node name, unique per machine (default: identify@HOSTNAME).")
@click.option("-E", "--events", is_flag=True, help="Send task events, for Flower.")
@_friendly_errors
def worker(concurrency: int | None, pool: str, name: str | None, events: bool) -> None:
    """Drain the queue to Amplitude until SIGTERM.

    Runs a Celery worker (JSON messages only) and, in its main process, the dispatcher that sends
    it a drain task whenever a shard has records. No beat process is needed. SIGTERM finishes the
    batch in flight and stops; records claimed and not acknowledged are read again first by the
    next drainer, so nothing is lost.
    """
    from worker.metrics import prepare_multiprocess_dir

    # Before anything imports prometheus_client: the pool processes keep their metrics in files.
    prepare_multiprocess_dir()
    from worker.celery_app import create_app
    from worker.preflight import check_redis
    from worker.settings import Settings

    settings = Settings.from_env()
    settings.require_api_key()
    if concurrency:
        settings = settings.with_changes(concurrency=concurrency)
    client = connect(settings.queue.redis_url)
    check_redis(client, settings)
    client.close()
    app = create_app(settings)
    node = name or f"identify@{socket.gethostname()}"
    if "@" not in node:
        node = f"{node}@{socket.gethostname()}"
    if settings.log_format == "json":
        # Every line on stderr a JSON object: no banner, and Python's warnings through logging.
        logging.captureWarnings(True)
    argv = [
        *(["--quiet"] if settings.log_format == "json" else []),
        "worker", "--queues", Keys(settings.queue.namespace).celery_queue, "--concurrency", str(settings.concurrency),
        "--pool", pool, "--loglevel", settings.log_level, "--hostname", node,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    if events:
        argv.append("--task-events")
    app.worker_main(argv)


# -- producers --------------------------------------------------------------------------------------
def _parse_pairs(pairs: tuple[str, ...], flag: str, *, numeric: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint=flag)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        if numeric and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise click.BadParameter(f"{name}: expected a number, got {raw!r}", param_hint=flag)
        out[name] = value
    return out


@main.command()
@click.option("--user-id", help="The user's id (user_id or device_id is required).")
@click.option("--device-id", help="The device's id.")
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="NAME=VALUE",
    help="$set a property (VALUE is JSON if it parses, else text).",
)
@click.option("--set-once", multiple=True, metavar="NAME=VALUE", help="$setOnce a property.")
@click.option("--add", multiple=True, metavar="NAME=NUMBER", help="$add to a numeric property.")
@click.option("--append", multiple=True, metavar="NAME=VALUE", help="$append to a list property.")
@click.option("--prepend", multiple=True, metavar="NAME=VALUE", help="$prepend to a list property.")
@click.option("--unset", multiple=True, metavar="NAME", help="$unset a property.")
@click.option("--field", multiple=True, metavar="NAME=VALUE", help=f"A top-level field: {', '.join(DEVICE_FIELDS)}.")
@click.option(
    "--json",
    "json_text",
    metavar="JSON|-",
    help="The whole identification as JSON ('-' reads stdin); flags are merged over it.",
)
@_friendly_errors
def enqueue(user_id: str | None, device_id: str | None, set_: tuple[str, ...], set_once: tuple[str, ...],
            add: tuple[str, ...], append: tuple[str, ...], prepend: tuple[str, ...], unset: tuple[str, ...],
            field: tuple[str, ...], json_text: str | None) -> None:  # fmt: skip
    """Validate and enqueue one identification.

    \b
    Examples:
      identify-queue enqueue --user-id user-42 --set plan=pro --add logins=1
      identify-queue enqueue --json '{"user_id": "user-42", "user_properties": {"plan": "pro"}}'
    """
    record: dict[str, Any] = {}
    if json_text is not None:
        text = sys.stdin.read() if json_text == "-" else json_text
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
        record = loaded
    if user_id:
        record["user_id"] = user_id
    if device_id:
        record["device_id"] = device_id
    record.update(_parse_pairs(field, "--field"))
    ops: dict[str, Any] = dict(record.get("user_properties") or {})
    for op, values in (
        ("$set", _parse_pairs(set_, "--set")), ("$setOnce", _parse_pairs(set_once, "--set-once")),
        ("$add", _parse_pairs(add, "--add", numeric=True)), ("$append", _parse_pairs(append, "--append")),
        ("$prepend", _parse_pairs(prepend, "--prepend")), ("$unset", {name: "-" for name in unset}),
    ):  # fmt: skip
        if values:
            ops.setdefault(op, {}).update(values)
    if ops:
        record["user_properties"] = ops
    with IdentifyProducer.from_env() as producer:
        try:
            producer.identify(record)
        except InvalidRecord as exc:
            click.echo(f"rejected: {exc}", err=True)
            sys.exit(EXIT_REJECTED)
    click.echo("enqueued 1 identification")


@main.command("import")
@click.argument("path", type=click.Path(allow_dash=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Input format (default: from the extension: .jsonl .ndjson .json, .csv .tsv, each also "
    "with .gz; stdin: jsonl). Gzip is recognised by its content, whatever the name.",
)
@click.option(
    "--job",
    metavar="NAME",
    help="The job whose progress Redis keeps, for --resume (default for a "
    "file: its name and a digest of its path, size and mtime; stdin without --job is not resumable).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Go on from the job's recorded progress; nothing to do if it "
    "finished, from the beginning if nothing is recorded.",
)
@click.option("--restart", is_flag=True, help="Import from the start although an interrupted run is recorded.")
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="COLUMN:NAME",
    help="CSV: the column becomes property NAME (or user_id / device_id).",
)
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="NAME=TYPE",
    help="CSV: convert property NAME's cells: str (default), int, float, bool, json.",
)
@click.option("--ignore", multiple=True, metavar="COLUMN", help="CSV: leave the column out.")
@click.option(
    "--empty",
    type=click.Choice(["omit", "unset"]),
    default="omit",
    show_default=True,
    help="CSV: an empty cell leaves the property out, or sends it as $unset.",
)
@click.option("--delimiter", metavar="CHAR", help="CSV: the separator (default ',', a tab for .tsv; 'tab').")
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Also write each rejected line to PATH as JSON Lines (line, field, rule, reason, text).",
)
@click.option(
    "--skip-unchanged",
    is_flag=True,
    help="Leave out records equal to what was last enqueued for their user (not $add/$append/$prepend).",
)
@click.option(
    "--fingerprint-ttl",
    default="8d",
    show_default=True,
    metavar="DURATION",
    help="How long a user's fingerprint is kept: each user is sent again at least this often.",
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "lines", "none"]),
    default="auto",
    show_default=True,
    help="A bar on a terminal, plain lines otherwise.",
)
@click.option(
    "--progress-every",
    default="5s",
    show_default=True,
    metavar="DURATION",
    help="How often a plain progress line is written.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Lines per Redis round trip (each also records the job's progress).",
)
@_friendly_errors
def import_(path: str, fmt: str | None, **options: Any) -> None:
    """Enqueue identifications from a JSON Lines or CSV file, gzip or not ('-' is stdin).

    Streams in constant memory, waits while the queue is full, and records its progress in Redis
    with every chunk, atomically, so --resume after any interruption enqueues each line exactly
    once. Each rejected line is reported on stderr with its line number and reason; the exit code
    is 1 if any line of the job was rejected.

    \b
    Examples:
      identify-queue import users.jsonl.gz --rejects rejects.jsonl
      identify-queue import users.csv --map Email:email --map uid:user_id --type age=int --skip-unchanged
      identify-queue import users.csv --resume          # after an interruption
      warehouse-export | identify-queue import - --job nightly-users --format csv
    """
    from producers.import_report import make_display, summary_line
    from producers.importer import Importer, ImportOptions

    settings = ImportOptions.from_cli(path, format=fmt, **options)  # type: ignore[arg-type]  # a click.Choice
    with IdentifyProducer.from_env() as producer:
        display = make_display(settings.progress, sys.stderr, every_s=settings.progress_every_s)
        try:
            report = Importer(producer, settings, display=display).run(path)
        finally:
            display.close()
    click.echo(summary_line(report.snapshot(), report.job, report.resumed_from))
    if report.rejected:
        sys.exit(EXIT_REJECTED)


# -- operators --------------------------------------------------------------------------------------
@main.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object (stable fields: queued, in_flight, held, deferred, dead_letter, ...).",
)
@_friendly_errors
def status(as_json: bool) -> None:
    """Show what is queued, in flight, held, deferred, dead-lettered, and why."""
    from worker.status import gather, render

    config = QueueConfig.from_env()
    client = connect(config.redis_url)
    result = gather(client, Keys(config.namespace), config.shards)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(result))


# -- dead-letter queue -----------------------------------------------------------------------------
def parse_since(value: str | None, now_ms: int | None = None) -> int | None:
    """`--since`: an ISO 8601 time (UTC unless it says otherwise) or an age such as 30m, 2h, 7d."""
    if not value:
        return None
    now_ms = entry_now_ms() if now_ms is None else now_ms
    units = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return now_ms - int(float(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use an ISO 8601 time or an age such as 30m, 2h, 7d",
                                 param_hint="--since") from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _selection(reason: str | None, since: str | None, ids: tuple[str, ...]) -> Any:
    from worker.deadletter import Selection

    return Selection(reason=reason, since_ms=parse_since(since), ids=ids)


def _dead_letters(chunk: int = 500) -> Any:
    from worker.deadletter import DeadLetterQueue

    return DeadLetterQueue(QueueConfig.from_env(), chunk=chunk)


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ms else "-"


REASON = click.option("--reason", type=click.Choice(REASONS),
                      help="Only entries dead-lettered for this reason.")  # fmt: skip
SINCE = click.option(
    "--since", metavar="TIME", help="Only entries that failed since TIME (ISO 8601, or an age: 30m, 2h)."
)


@main.group()
def dlq() -> None:
    """Inspect, export, replay and purge dead-lettered records.

    Every entry keeps the identification as it was enqueued, the reason (invalid, too_large,
    expired, undecodable, poison), the HTTP status and an excerpt of the answer, the attempts, and
    when it was first enqueued and when it failed.

    Replay puts each user's records back in their original order, ahead of what that user still
    has queued or waiting. Updates of the user delivered meanwhile cannot be taken back: a replayed
    record is applied after them (an old $set replayed after a newer one wins), so compare each
    entry's enqueue time with the user's newer updates before replaying it.
    """


@dlq.command("list")
@REASON
@SINCE
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@_friendly_errors
def dlq_list(reason: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List dead-lettered records, oldest failure first."""
    queue = _dead_letters()
    shown = 0
    for doc in queue.entries(_selection(reason, since, ())):
        if shown >= limit:
            break
        shown += 1
        if as_json:
            click.echo(orjson.dumps(doc))
            continue
        if shown == 1:
            click.echo(f"{'id':<10} {'enqueued at':<20} {'failed at':<20} {'reason':<11} {'status':>6} {'tries':>5}  "
                       "user / detail")  # fmt: skip
        status = doc["status"] if doc["status"] is not None else "-"
        click.echo(f"{doc['id']:<10} {_when(doc['first_enqueued_ms']):<20} {_when(doc['failed_at_ms']):<20} "
                   f"{doc['reason']:<11} {status:>6} {doc['attempts']:>5}  {doc['user_key'] or '-'}: "
                   f"{doc['detail'][:60]}")  # fmt: skip
    if not as_json:
        click.echo(f"{shown} shown of {queue.count()} dead-lettered", err=True)


@dlq.command("show")
@click.argument("entry_id")
@_friendly_errors
def dlq_show(entry_id: str) -> None:
    """Show one entry in full, as JSON."""
    doc = _dead_letters().show(entry_id)
    if doc is None:
        click.echo(f"no dead-letter entry {entry_id}", err=True)
        sys.exit(EXIT_REJECTED)
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


@dlq.command("export")
@REASON
@SINCE
@_friendly_errors
def dlq_export(reason: str | None, since: str | None) -> None:
    """Write entries as JSON Lines on stdout (each with at least `record` and `reason`)."""
    out = sys.stdout.buffer
    for doc in _dead_letters().entries(_selection(reason, since, ())):
        out.write(orjson.dumps(doc) + b"\n")
    out.flush()


@dlq.command("replay")
@REASON
@SINCE
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only these entries (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every entry (needed when no filter is given).")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Entries moved per atomic step (smaller steps block Redis for less time).")  # fmt: skip
@_friendly_errors
def dlq_replay(reason: str | None, since: str | None, ids: tuple[str, ...], everything: bool, chunk_size: int) -> None:
    """Put entries back on their user's shard, to be sent again.

    Each entry moves atomically (removed from the dead-letter queue and queued in one step), so an
    interrupted replay neither loses nor doubles one; run it again to finish. Replayed records go
    to the end of their user's queue, after that user's newer updates.
    """
    if not (reason or since or ids or everything):
        raise click.UsageError("say what to replay: --reason, --since, --id, or --all")
    moved = _dead_letters(chunk_size).replay(_selection(reason, since, ids))
    click.echo(f"replayed {moved} record(s)")


@dlq.command("purge")
@REASON
@SINCE
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only these entries (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every entry (needed when no filter is given).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_friendly_errors
def dlq_purge(reason: str | None, since: str | None, ids: tuple[str, ...], everything: bool, yes: bool) -> None:
    """Delete entries for good."""
    if not (reason or since or ids or everything):
        raise click.UsageError("say what to purge: --reason, --since, --id, or --all")
    queue = _dead_letters()
    selection = _selection(reason, since, ids)
    if not yes:
        count = sum(1 for _ in queue.entries(selection))
        click.confirm(f"Delete {count} dead-lettered record(s) for good?", abort=True)
    click.echo(f"purged {queue.purge(selection)} record(s)")


# -- HTTP ingest ------------------------------------------------------------------------------------
@main.command()
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
@_friendly_errors
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
    from producers.ingest_server import run

    def ready(urls: list[str]) -> None:
        click.echo(f"listening on {urls[0]}")
        sys.stdout.flush()

    run(host=host, port=port, threads=threads, insecure_no_auth=insecure_no_auth, ready=ready)


# -- local stack ------------------------------------------------------------------------------------
@main.command("local-amplitude")
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
def local_amplitude(host: str, port: int, api_key_env: str | None, faults: str | None) -> None:
    """Run a local Amplitude-compatible /identify endpoint (for the demo and tests)."""
    from worker.local_amplitude import serve

    api_key = os.environ.get(api_key_env) if api_key_env else None
    if faults:
        try:
            orjson.loads(faults)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--faults") from None

    def ready(bound: int) -> None:
        click.echo(f"listening on http://{host}:{bound}", nl=True)
        sys.stdout.flush()

    serve(host, port, api_key or None, ready=ready, faults=faults.encode() if faults else None)


@main.command()
@click.option(
    "--users",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Users to update (default 2000 locally, 3 against Amplitude).",
)
@click.option("--updates", type=click.IntRange(1, 1000), default=10, show_default=True, help="Updates per user.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes.")
@_friendly_errors
def demo(users: int | None, updates: int, concurrency: int) -> None:
    """Run the whole job end to end and show what was delivered.

    Starts a private Redis unless REDIS_URL is set, and the local Amplitude-compatible server
    unless AMPLITUDE_API_KEY is set; enqueues USERS x UPDATES identifications, runs a worker until
    everything is delivered, then checks each user's order and prints a summary.
    """
    from worker.demo import run_demo

    sys.exit(run_demo(users=users, updates=updates, concurrency=concurrency))


if __name__ == "__main__":
    main()
