"""`identify-queue enqueue` and `identify-queue import`: put identifications on the queue."""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

import click
import orjson
from click.core import ParameterSource

from producers.contract.errors import InvalidRecord, StoreError
from producers.importer.job import JobState
from producers.producer import IdentifyProducer
from producers.record import DEVICE_FIELDS, check_unique_keys
from worker.cli.common import EXIT_INTERRUPTED, EXIT_REJECTED, friendly_errors

if TYPE_CHECKING:
    from producers.importer.run import Importer


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


@click.command()
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
@friendly_errors
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
        try:
            check_unique_keys(text, orjson.dumps(loaded))
        except InvalidRecord as exc:
            click.echo(f"rejected: {exc}", err=True)
            sys.exit(EXIT_REJECTED)
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


@click.command("import")
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
@friendly_errors
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
    from producers.importer.report import make_display, summary_line
    from producers.importer.run import Importer, ImportOptions

    settings = ImportOptions.from_cli(path, format=fmt, **options)  # type: ignore[arg-type]  # a click.Choice
    ctx = click.get_current_context()
    given = {name: value for name, value in ctx.params.items()
             if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}  # fmt: skip
    with IdentifyProducer.from_env() as producer:
        display = make_display(settings.progress, sys.stderr, every_s=settings.progress_every_s)
        importer = Importer(producer, settings, display=display)
        try:
            report = importer.run(path)
        except KeyboardInterrupt:
            display.close()
            click.echo(f"identify-queue: {interrupted(path, given, importer)}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            display.close()
    click.echo(summary_line(report.snapshot(), report.job, report.resumed_from))
    if report.rejected:
        sys.exit(EXIT_REJECTED)


#: The options of `import` as flags, in the order a resume command lists them.
IMPORT_FLAGS = {"fmt": "--format", "job": "--job", "maps": "--map", "types": "--type", "ignore": "--ignore",
                "empty": "--empty", "delimiter": "--delimiter", "rejects": "--rejects",
                "skip_unchanged": "--skip-unchanged", "fingerprint_ttl": "--fingerprint-ttl",
                "progress": "--progress", "progress_every": "--progress-every",
                "chunk_size": "--chunk-size"}  # fmt: skip


def resume_command(path: str, given: dict[str, Any]) -> str:
    """The command that goes on with an interrupted import: the flags it was given, and --resume.

    ``given`` holds the options set on the command line (not their defaults); a file's path is
    made absolute, since the job is named after it and the command may be run from elsewhere.
    """
    args = ["identify-queue", "import", path if path == "-" else os.path.abspath(path)]
    for name, flag in IMPORT_FLAGS.items():
        value = given.get(name)
        if value is None or value is False or value == ():
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, tuple | list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return shlex.join([*args, "--resume"])


def interrupted_message(path: str, given: dict[str, Any], job: str | None, state: JobState | None) -> str:
    """What an import stopped by Ctrl-C says: where it stopped, and how to go on from there."""
    if job is None:
        return "interrupted; stdin read without --job is not recorded, so it cannot be resumed"
    if state is None:
        return "interrupted before any line was enqueued; nothing is recorded: run the same command again"
    where = (f"interrupted at line {state.line:,} ({state.enqueued:,} enqueued, {state.rejected:,} rejected), "
             f"recorded in job {job}")  # fmt: skip
    if state.finished:
        return f"{where}, which had finished"
    if path == "-":
        return f"{where}; go on by giving the same input again to: {resume_command(path, given)}"
    return f"{where}; go on with: {resume_command(path, given)}"


def interrupted(path: str, given: dict[str, Any], importer: Importer) -> str:
    try:
        state = importer.recorded()
    except StoreError as exc:
        return (f"interrupted; where it stopped cannot be read ({exc}); --resume goes on from the recorded "
                f"position: {resume_command(path, given)}")  # fmt: skip
    return interrupted_message(path, given, importer.job, state)
