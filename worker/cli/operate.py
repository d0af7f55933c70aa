"""`identify-queue status` and `identify-queue dlq ...`: what is queued, failing and why; replay and purge."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from producers.contract.connection import connect
from producers.contract.entry import now_ms as entry_now_ms
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from worker.cli.common import EXIT_REJECTED, friendly_errors
from worker.deadletter import REASONS  # imports no Celery: every command may use it


# -- operators --------------------------------------------------------------------------------------
@click.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object (stable fields: queued, in_flight, held, deferred, dead_letter, ...).",
)
@friendly_errors
def status(as_json: bool) -> None:
    """Show what is queued, in flight, held, deferred, dead-lettered, and why."""
    from worker.status import gather, layout_mismatch, render

    config = QueueConfig.from_env()
    client = connect(config.redis_url)
    result = gather(client, Keys(config.namespace), config.shards)
    refused = layout_mismatch(result, config.shards)
    if refused is not None:
        raise refused  # as enqueue and worker refuse it: with another shard count it shows a part of the queue
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(result, config.namespace))


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


@click.group()
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
@friendly_errors
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
@friendly_errors
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
@friendly_errors
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
@friendly_errors
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
@friendly_errors
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


@click.command("acl")
@click.option("--user", default="identify", show_default=True, help="The Redis user's name.")
@click.option("--events", is_flag=True, help="Also the channels of task events (for Flower, `worker --events`).")
@friendly_errors
def acl(user: str, events: bool) -> None:
    """Print the least-privilege Redis ACL for identify-queue's settings (IDENTIFY_NAMESPACE, REDIS_URL).

    Keys under the namespace, the commands identify-queue runs, Celery's control channel, and INFO
    (optional: without it the worker warns that it cannot check maxmemory-policy). Nothing else of
    @admin or @dangerous. Replace PASSWORD, then run the line with redis-cli as an admin.
    """
    from worker.preflight import least_privilege_acl
    from worker.settings import Settings

    click.echo(least_privilege_acl(Settings.from_env(), user=user, events=events))
