"""CSV rows to identifications: which column is an id, which a property, and of what type.

The rules, all decided here (pure functions, tested with tables):

- The first line is the header.  A column named ``user_id`` or ``device_id`` (after ``--map``) is
  the record's id; at least one of them must exist.  Every other column is a user property, sent
  with ``$set``; ``--ignore COLUMN`` leaves a column out.
- ``--map COLUMN:NAME`` renames a column; ``--type NAME=TYPE`` converts its cells (NAME as after
  ``--map``): ``str`` (the default), ``int`` (``42``, also an integral ``42.0`` as float-typed
  exports write it), ``float`` (finite), ``bool`` (true/false, yes/no, y/n, t/f, 1/0, any case),
  ``json`` (any JSON value: an array, an object, a quoted string, null).
- An empty cell means "not set": the property is left out of that record, and an empty id cell
  means the record has no such id.  CSV cannot tell an empty string from a missing value; the
  nightly-sync reading is that a warehouse NULL must not wipe a property.  ``--empty unset`` sends
  empty cells as ``$unset`` instead; an empty string itself can be sent with ``--type NAME=json``
  and a cell holding ``""``.  A typed cell of only spaces is empty too; ``str`` cells are kept
  exactly as written.
- A row whose number of cells differs from the header's is rejected (``bad_row``); a cell that
  does not convert is rejected with its property's path and a rule such as ``bad_int``.
- Top-level fields other than the ids (``platform``, ``country`` ...) are not set from CSV: a
  column named so is a property.  Amplitude resets the rest of a field group (platform/os/device,
  or country/region/city/dma) when one of it is sent alone; use JSON Lines for those.

A mistake in the header or the flags (a ``--map`` naming no column, two columns ending up with one
name, no id column) is a ConfigError at start, before any row is read.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from producers.contract.errors import ConfigError, InvalidRecord
from producers.importer.options import CellType, CsvOptions

Converter = Callable[[str], Any]
ID_FIELDS = ("user_id", "device_id")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if not number.is_integer() or abs(number) >= 2**63:
        raise ValueError(f"expected an integer, got {text!r}")
    return int(number)


def to_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {text!r}")
    return number


def to_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true/false, yes/no, y/n, t/f or 1/0, got {text!r}")


def to_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"expected JSON, got {text!r} ({exc})") from None


CONVERTERS: dict[CellType, Converter | None] = {
    "str": None, "int": to_int, "float": to_float, "bool": to_bool, "json": to_json,
}  # fmt: skip


@dataclass(frozen=True)
class Property:
    index: int
    header: str
    name: str
    kind: CellType
    convert: Converter | None


@dataclass(frozen=True)
class ColumnPlan:
    """How each cell of a row is used: ``ids`` as (cell index, field), ``properties`` in header order."""

    width: int
    ids: tuple[tuple[int, str], ...]
    properties: tuple[Property, ...]
    unset_empty: bool


def plan_columns(header: list[str], options: CsvOptions) -> ColumnPlan:
    """Read the header against ``--map``, ``--type`` and ``--ignore``; ConfigError names what is wrong."""
    for flag, names in (("--map", options.renames), ("--ignore", options.ignore)):
        missing = [n for n in names if n not in header]
        if missing:
            raise ConfigError(f"{flag}: no column named {', '.join(map(repr, missing))}; the header has {header}")
    twice = [c for c, n in Counter(header).items() if n > 1 and c not in options.ignore]
    if twice:
        raise ConfigError(f"the header names {', '.join(map(repr, twice))} more than once")
    ids: list[tuple[int, str]] = []
    properties: list[Property] = []
    seen: dict[str, str] = {}
    for index, column in enumerate(header):
        if column in options.ignore:
            continue
        if not column:
            raise ConfigError(f"column {index + 1} of the header has no name; name it with --map or --ignore ''")
        name = options.renames.get(column, column)
        if name in seen:
            raise ConfigError(f"columns {seen[name]!r} and {column!r} would both become {name!r}; see --map")
        seen[name] = column
        if name in ID_FIELDS:
            ids.append((index, name))
            continue
        kind = options.types.get(name, "str")
        properties.append(Property(index, column, name, kind, CONVERTERS[kind]))
    unknown = [n for n in options.types if n not in seen]
    if unknown:
        raise ConfigError(f"--type: no column is named {', '.join(map(repr, unknown))} (after --map); "
                          f"columns: {list(seen)}")  # fmt: skip
    if not ids:
        raise ConfigError(f"no user_id or device_id column in {header}; name one with --map COLUMN:user_id")
    return ColumnPlan(len(header), tuple(ids), tuple(properties), options.empty == "unset")


def row_to_record(cells: list[str], plan: ColumnPlan) -> dict[str, Any]:
    """One CSV row as an identification (not yet validated); InvalidRecord for a row that cannot be one."""
    if len(cells) != plan.width:
        raise InvalidRecord("", "bad_row", f"{len(cells)} cells, the header has {plan.width}")
    record: dict[str, Any] = {field: cells[index] for index, field in plan.ids if cells[index]}
    operations = _operations(cells, plan)
    if operations:
        record["user_properties"] = operations
    return record


def _operations(cells: list[str], plan: ColumnPlan) -> dict[str, Any]:
    sets: dict[str, Any] = {}
    unsets: dict[str, str] = {}
    for prop in plan.properties:
        text = cells[prop.index]
        if prop.convert is None:
            if text:
                sets[prop.name] = text
            elif plan.unset_empty:
                unsets[prop.name] = "-"
            continue
        text = text.strip()
        if not text:
            if plan.unset_empty:
                unsets[prop.name] = "-"
            continue
        try:
            sets[prop.name] = prop.convert(text)
        except ValueError as exc:
            raise InvalidRecord(f"user_properties.$set.{prop.name}", f"bad_{prop.kind}",
                                f"column {prop.header!r}: {exc}") from None  # fmt: skip
    operations: dict[str, Any] = {}
    if sets:
        operations["$set"] = sets
    if unsets:
        operations["$unset"] = unsets
    return operations
