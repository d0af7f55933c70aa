"""An input's lines to validated records, for JSON Lines and CSV, each refusal with its line number.

Both readers pull lines from a ``LineSource`` one record at a time, so when a record is yielded the
source's ``line`` and ``offset`` stand exactly after it: the importer records that position with
the chunk the record goes in.  Blank lines are skipped (counted as read, neither enqueued nor
rejected).  A CSV record may span lines (a quoted newline); its line number is the first one's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import NamedTuple

import orjson

from producers.contract.errors import InvalidRecord, SourceError
from producers.importer.csv_columns import ColumnPlan, plan_columns, row_to_record
from producers.importer.fingerprint import fingerprint_for_skip
from producers.importer.options import CsvOptions
from producers.importer.source import LineSource
from producers.record import ValidRecord, check_unique_keys, validate

UTF8_BOM = b"\xef\xbb\xbf"


class Good(NamedTuple):
    record: ValidRecord
    #: None without --skip-unchanged; b"" for a record that must always be sent.
    fingerprint: bytes | None


class Rejected(NamedTuple):
    line: int
    error: InvalidRecord
    #: The input as read, newline included (all of a CSV record's lines).
    text: bytes


Item = Good | Rejected


def jsonl_items(source: LineSource, *, min_id_length: int, max_record_bytes: int,
                skip_unchanged: bool = False) -> Iterator[Item]:  # fmt: skip
    loads = orjson.loads
    count = bytes.count
    # Exports written by Windows tools start with a byte order mark, which JSON does not allow.
    source.skip(UTF8_BOM)
    for line in source:
        if line.isspace():
            continue
        try:
            obj = loads(line)
            record = validate(obj, min_id_length=min_id_length, max_record_bytes=max_record_bytes, parsed=True)
            # check_unique_keys's quick tests, inline: a call per line costs as much as the tests.  A
            # line written as orjson writes it (most exports) starts with its own encoding.
            data = record.data
            if not line.startswith(data) and (count(line, b":") != count(data, b":") or b"\\" in line):
                check_unique_keys(line, data)
        except orjson.JSONDecodeError as exc:
            yield Rejected(source.line, InvalidRecord("", "bad_json", f"not valid JSON: {exc}"), line)
        except InvalidRecord as exc:
            yield Rejected(source.line, exc, line)
        else:
            yield Good(record, fingerprint_for_skip(obj) if skip_unchanged else None)


def csv_plan(source: LineSource, options: CsvOptions) -> ColumnPlan | None:
    """The plan of the input's header (read now if the source is at its start); None for an empty input.

    ConfigError for a header the flags do not fit, SourceError for one that is not CSV at all.
    """
    header_line = source.header()
    if header_line is None:
        return None
    text = _text(header_line).lstrip("\ufeff")
    if "\x00" in text:
        raise SourceError(f"{source.info.name}: line 1 holds NUL bytes: a binary file, not CSV?")
    if "\r" in text.rstrip("\r\n"):
        # Without a newline the whole input is one line: CR-only line endings (old Mac exports).
        raise SourceError(f"{source.info.name}: line 1 has a carriage return inside it: CR-only line endings? "
                          "Convert them to newlines first (tr '\\r' '\\n')")  # fmt: skip
    try:
        header = next(csv.reader([text], delimiter=options.delimiter), [])
    except csv.Error as exc:
        raise SourceError(f"{source.info.name}: line 1 (the header) is not CSV ({exc}); is it a CSV file?") from None
    return plan_columns(header, options)


def csv_items(source: LineSource, options: CsvOptions, *, min_id_length: int, max_record_bytes: int,
              skip_unchanged: bool = False) -> Iterator[Item]:  # fmt: skip
    """Rows of a CSV input with a header; ConfigError before the first row if the header is unusable."""
    plan = csv_plan(source, options)
    if plan is None:
        return
    lines = iter(source)
    record_lines: list[bytes] = []

    def texts() -> Iterator[str]:
        for line in lines:
            record_lines.append(line)
            yield _text(line)

    rows = csv.reader(texts(), delimiter=options.delimiter)
    start = source.line + 1
    while True:
        try:
            cells = next(rows)
            if not cells or (len(cells) == 1 and cells[0].isspace()):
                record_lines.clear()
                start = source.line + 1
                continue
            obj = row_to_record(cells, plan)
            record = validate(obj, min_id_length=min_id_length, max_record_bytes=max_record_bytes, parsed=True)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Rejected(start, InvalidRecord("", "bad_csv", f"not valid CSV: {exc}"), b"".join(record_lines))
        except InvalidRecord as exc:
            yield Rejected(start, exc, b"".join(record_lines))
        else:
            yield Good(record, fingerprint_for_skip(obj) if skip_unchanged else None)
        record_lines.clear()
        start = source.line + 1


def _text(line: bytes) -> str:
    # Bytes that are not UTF-8 survive as lone surrogates, which validation refuses as bad_utf8
    # naming the property, instead of failing the whole line here.
    return line.decode("utf-8", "surrogateescape")
