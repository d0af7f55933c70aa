"""What an import is asked to do, read once into frozen objects; a bad value fails at start naming its flag.

The parsers are pure functions so that the command line and the Python API share one reading of
``--map``, ``--type``, durations and formats, and a table of cases tests each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal, get_args

from producers.contract.errors import ConfigError

Format = Literal["jsonl", "csv"]
CellType = Literal["str", "int", "float", "bool", "json"]
Empty = Literal["omit", "unset"]
ProgressMode = Literal["auto", "bar", "lines", "none"]

#: Extensions (after a ``.gz`` or ``.gzip``, if any, is removed) and the format and delimiter they mean.
#: ``.json`` is here because BigQuery and others name newline-delimited JSON exports that way.
EXTENSIONS: dict[str, tuple[Format, str]] = {
    ".jsonl": ("jsonl", ","),
    ".ndjson": ("jsonl", ","),
    ".json": ("jsonl", ","),
    ".csv": ("csv", ","),
    ".tsv": ("csv", "\t"),
    ".tab": ("csv", "\t"),
}
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.:@+-]{1,200}$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_IDS = ("user_id", "device_id")


def parse_duration(text: str, flag: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``12h``, ``8d`` (or ``1.5h``)."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"{flag}: expected a duration such as 90s, 15m, 12h or 8d, got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise ConfigError(f"{flag}: expected a duration such as 90s, 15m, 12h or 8d, got {text!r}")
    return value


def format_of(path: str, given: Format | None) -> Format:
    """``--format`` when given; else from the extension; stdin without ``--format`` is JSON Lines."""
    if given:
        return given
    if path == "-":
        return "jsonl"
    return _by_extension(path)[0]


def default_delimiter(path: str) -> str:
    """A tab for ``.tsv`` and ``.tab`` files, a comma otherwise."""
    if path == "-":
        return ","
    try:
        return _by_extension(path)[1]
    except ConfigError:
        return ","


def _by_extension(path: str) -> tuple[Format, str]:
    suffixes = [s.lower() for s in PurePath(path).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes.pop()
    found = EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if found is None:
        known = " ".join(EXTENSIONS)
        raise ConfigError(f"cannot tell the format of {path} from its name (known: {known}, each optionally .gz); "
                          "pass --format jsonl or --format csv")  # fmt: skip
    return found


def parse_renames(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--map COLUMN:NAME`` (repeatable): the CSV column COLUMN becomes NAME.

    NAME may be ``user_id`` or ``device_id`` (the column is then the record's id), or any property
    name.  The last colon separates, so a column name may contain colons.
    """
    out: dict[str, str] = {}
    for item in items:
        column, sep, name = item.rpartition(":")
        if not sep or not column or not name:
            raise ConfigError(f"--map: expected COLUMN:NAME, got {item!r}")
        if column in out:
            raise ConfigError(f"--map: column {column!r} is mapped twice")
        out[column] = name
    return out


def parse_types(items: tuple[str, ...] | list[str]) -> dict[str, CellType]:
    """``--type NAME=TYPE`` (repeatable); NAME is the property's name after ``--map``."""
    allowed = get_args(CellType)
    out: dict[str, CellType] = {}
    for item in items:
        name, sep, kind = item.rpartition("=")
        kind = kind.strip().lower()
        if not sep or not name:
            raise ConfigError(f"--type: expected NAME=TYPE, got {item!r}")
        if kind not in allowed:
            raise ConfigError(f"--type {item}: TYPE must be one of {', '.join(allowed)}")
        if name in _IDS and kind != "str":
            raise ConfigError(f"--type {item}: {name} is always a string")
        out[name] = kind  # type: ignore[assignment]  # checked against CellType's values just above
    return out


def parse_delimiter(text: str | None, path: str) -> str:
    if text is None:
        return default_delimiter(path)
    value = {"tab": "\t", "\\t": "\t"}.get(text.lower(), text)
    if len(value) != 1 or value in '"\r\n':
        raise ConfigError(f"--delimiter: expected one character (or 'tab'), got {text!r}")
    return value


def check_job_name(name: str) -> str:
    if not _JOB_NAME.match(name):
        raise ConfigError(f"--job: 1-200 characters of letters, digits and _ . : @ + -, got {name!r}")
    return name


@dataclass(frozen=True)
class CsvOptions:
    """How CSV columns become an identification (see ``producers/importer/csv_columns.py`` for the rules)."""

    renames: dict[str, str] = field(default_factory=dict)
    types: dict[str, CellType] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    empty: Empty = "omit"
    delimiter: str = ","

    def is_default(self) -> bool:
        return not (self.renames or self.types or self.ignore or self.empty != "omit")


@dataclass(frozen=True)
class ImportOptions:
    """One import's settings.  ``from_cli`` reads the command line's strings; the defaults suit the API."""

    #: None: from the file's extension (stdin: JSON Lines).
    format: Format | None = None
    #: The job whose progress Redis keeps; None: derived from the file; stdin without one is not tracked.
    job: str | None = None
    #: Go on from the job's recorded progress (start from the beginning when there is none).
    resume: bool = False
    #: Start the job over although an interrupted run of it is recorded.
    restart: bool = False
    csv: CsvOptions = field(default_factory=CsvOptions)
    #: Lines per Redis round trip (each round trip records the job's progress too).
    chunk_size: int = 1000
    #: Leave out a record equal to what was last enqueued for its user (see ``fingerprint.py``).
    skip_unchanged: bool = False
    fingerprint_ttl_s: float = 8 * 86400.0
    #: JSON Lines file that receives each rejected line (None: stderr only).
    rejects: str | None = None
    progress: ProgressMode = "auto"
    progress_every_s: float = 5.0

    def __post_init__(self) -> None:
        if self.resume and self.restart:
            raise ConfigError("--resume and --restart exclude each other")
        if not 1 <= self.chunk_size <= 10_000:
            raise ConfigError(f"--chunk-size: between 1 and 10000, got {self.chunk_size}")
        if self.skip_unchanged and self.fingerprint_ttl_s < 1:
            raise ConfigError("--fingerprint-ttl: at least 1s")
        if self.job is not None:
            check_job_name(self.job)

    @classmethod
    def from_cli(cls, path: str, *, format: Format | None = None, job: str | None = None, resume: bool = False,
                 restart: bool = False, maps: tuple[str, ...] = (), types: tuple[str, ...] = (),
                 ignore: tuple[str, ...] = (), empty: Empty = "omit", delimiter: str | None = None,
                 chunk_size: int = 1000, skip_unchanged: bool = False, fingerprint_ttl: str = "8d",
                 rejects: str | None = None, progress: ProgressMode = "auto",
                 progress_every: str = "5s") -> ImportOptions:  # fmt: skip
        fmt = format_of(path, format)
        csv = CsvOptions(parse_renames(maps), parse_types(types), frozenset(ignore), empty,
                         parse_delimiter(delimiter, path))  # fmt: skip
        if fmt != "csv" and not csv.is_default():
            raise ConfigError("--map, --type, --ignore and --empty apply to CSV input only")
        if path == "-" and job is None and (resume or restart):
            raise ConfigError("--resume and --restart need --job NAME when reading stdin (the job names the progress)")
        ttl_s = parse_duration(fingerprint_ttl, "--fingerprint-ttl")
        every_s = parse_duration(progress_every, "--progress-every")
        return cls(format=fmt, job=job, resume=resume, restart=restart, csv=csv, chunk_size=chunk_size,
                   skip_unchanged=skip_unchanged, fingerprint_ttl_s=ttl_s, rejects=rejects, progress=progress,
                   progress_every_s=every_s)  # fmt: skip
