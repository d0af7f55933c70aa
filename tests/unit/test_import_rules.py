"""The import's decisions, as tables: flags, CSV columns and cells, job decisions, waits, progress text."""

from __future__ import annotations

from typing import Any

import pytest

from producers.contract.errors import ConfigError, ImportJobError, InvalidRecord
from producers.importer.csv_columns import plan_columns, row_to_record, to_bool, to_float, to_int, to_json
from producers.importer.fingerprint import DIGEST_BYTES, fingerprint, fingerprint_for_skip, skippable
from producers.importer.job import Action, JobState, decide, default_job_name
from producers.importer.options import (
    CsvOptions,
    ImportOptions,
    format_of,
    parse_delimiter,
    parse_duration,
    parse_renames,
    parse_types,
)
from producers.importer.report import (
    Snapshot,
    bar_line,
    duration,
    eta_s,
    progress_line,
    reject_entry,
    summary_line,
    terminal_width,
)
from producers.importer.run import FULL_WAIT_CAP_S, full_wait_s
from producers.importer.source import SourceInfo
from worker.cli.produce import interrupted_message, resume_command


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("8d", 691200), ("1.5h", 5400), (" 0 ", 0), ("8D", 691200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--x") == seconds


@pytest.mark.parametrize("text", ["", "d", "-1s", "soon", "nan", "inf", "1w"])
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--fingerprint-ttl"):
        parse_duration(text, "--fingerprint-ttl")


@pytest.mark.parametrize(
    ("path", "given", "expected"),
    [
        ("users.jsonl", None, "jsonl"), ("users.JSONL.GZ", None, "jsonl"), ("export.ndjson.gzip", None, "jsonl"),
        ("bq-export.json", None, "jsonl"), ("users.csv", None, "csv"), ("users.csv.gz", None, "csv"),
        ("users.tsv", None, "csv"), ("-", None, "jsonl"), ("-", "csv", "csv"), ("dump.txt", "csv", "csv"),
        ("users.csv", "jsonl", "jsonl"),
    ],
)  # fmt: skip
def test_format_from_the_extension_unless_given(path: str, given: Any, expected: str) -> None:
    assert format_of(path, given) == expected


@pytest.mark.parametrize("path", ["dump.txt", "users", "users.gz", "users.csv.zip"])
def test_an_unknown_extension_asks_for_format(path: str) -> None:
    with pytest.raises(ConfigError, match="pass --format"):
        format_of(path, None)


def test_delimiters() -> None:
    assert parse_delimiter(None, "a.tsv.gz") == "\t"
    assert parse_delimiter(None, "a.csv") == ","
    assert parse_delimiter("tab", "a.csv") == "\t"
    assert parse_delimiter(";", "-") == ";"
    with pytest.raises(ConfigError, match="--delimiter"):
        parse_delimiter(";;", "a.csv")


def test_renames_and_types() -> None:
    assert parse_renames(["Email:email", "a:b:c", "uid:user_id"]) == {"Email": "email", "a:b": "c", "uid": "user_id"}
    assert parse_types(["age=int", "vip=BOOL", "tags=json"]) == {"age": "int", "vip": "bool", "tags": "json"}
    for bad, flag in [(["Email"], "--map"), ([":x"], "--map"), (["a:x", "a:y"], "--map")]:
        with pytest.raises(ConfigError, match=flag):
            parse_renames(bad)
    for bad in (["age"], ["age=integer"], ["user_id=int"]):
        with pytest.raises(ConfigError, match="--type"):
            parse_types(bad)


def test_options_refuse_contradictions_at_start() -> None:
    with pytest.raises(ConfigError, match="exclude each other"):
        ImportOptions(resume=True, restart=True)
    with pytest.raises(ConfigError, match="CSV input only"):
        ImportOptions.from_cli("users.jsonl", maps=("a:b",))
    with pytest.raises(ConfigError, match="--job NAME"):
        ImportOptions.from_cli("-", resume=True)
    with pytest.raises(ConfigError, match="--job"):
        ImportOptions(job="has space")
    assert ImportOptions.from_cli("-", job="nightly", resume=True).job == "nightly"


# -- CSV columns and cells ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("convert", "text", "value"),
    [
        (to_int, "42", 42), (to_int, "-7", -7), (to_int, "42.0", 42), (to_int, "1e3", 1000),
        (to_float, "2.5", 2.5), (to_float, "-1e-3", -0.001), (to_float, "3", 3.0),
        (to_bool, "TRUE", True), (to_bool, "yes", True), (to_bool, "Y", True), (to_bool, "1", True),
        (to_bool, "false", False), (to_bool, "No", False), (to_bool, "f", False), (to_bool, "0", False),
        (to_json, '["a", 1]', ["a", 1]), (to_json, '{"k": null}', {"k": None}), (to_json, '""', ""),
    ],
)  # fmt: skip
def test_cell_types(convert: Any, text: str, value: Any) -> None:
    result = convert(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("convert", "text"),
    [(to_int, "4.5"), (to_int, "abc"), (to_int, "1e30"), (to_float, "nan"), (to_float, "inf"), (to_float, "x"),
     (to_bool, "maybe"), (to_bool, "2"), (to_json, "{oops"), (to_json, "NaN")],
)  # fmt: skip
def test_cells_that_do_not_convert(convert: Any, text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        convert(text)


HEADER = ["uid", "Email", "age", "vip", "device"]
OPTIONS = CsvOptions(renames={"uid": "user_id", "Email": "email", "device": "device_id"},
                     types={"age": "int", "vip": "bool"})  # fmt: skip


@pytest.mark.parametrize(
    ("cells", "record"),
    [
        (["user-00001", "a@x.com", "31", "true", ""],
         {"user_id": "user-00001", "user_properties": {"$set": {"email": "a@x.com", "age": 31, "vip": True}}}),
        # empty cells are "not set", typed or not; blank typed cells too
        (["user-00002", "", " ", "", ""], {"user_id": "user-00002"}),
        # device_id only
        (["", "b@x.com", "", "no", "device-0003"],
         {"device_id": "device-0003", "user_properties": {"$set": {"email": "b@x.com", "vip": False}}}),
        # strings are kept exactly, spaces included
        (["user-00004", " padded ", "22", "", ""],
         {"user_id": "user-00004", "user_properties": {"$set": {"email": " padded ", "age": 22}}}),
    ],
)  # fmt: skip
def test_rows_to_records(cells: list[str], record: dict[str, Any]) -> None:
    assert row_to_record(cells, plan_columns(HEADER, OPTIONS)) == record


def test_empty_cells_can_mean_unset() -> None:
    options = CsvOptions(renames=OPTIONS.renames, types=OPTIONS.types, empty="unset")
    record = row_to_record(["user-00001", "", "5", "", ""], plan_columns(HEADER, options))
    assert record == {"user_id": "user-00001",
                      "user_properties": {"$set": {"age": 5}, "$unset": {"email": "-", "vip": "-"}}}  # fmt: skip


@pytest.mark.parametrize(
    ("cells", "field", "rule"),
    [
        (["user-00001", "a", "x", "", ""], "user_properties.$set.age", "bad_int"),
        (["user-00001", "a", "", "sure", ""], "user_properties.$set.vip", "bad_bool"),
        (["user-00001", "a", "3"], "", "bad_row"),
        (["user-00001", "a", "3", "", "", "extra"], "", "bad_row"),
    ],
)
def test_rows_that_cannot_be_records(cells: list[str], field: str, rule: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        row_to_record(cells, plan_columns(HEADER, OPTIONS))
    assert (caught.value.field, caught.value.rule) == (field, rule)


@pytest.mark.parametrize(
    ("header", "options", "message"),
    [
        (["email", "age"], CsvOptions(), "no user_id or device_id column"),
        (["user_id", "a", "a"], CsvOptions(), "more than once"),
        (["user_id", ""], CsvOptions(), "has no name"),
        (["user_id", "Email"], CsvOptions(renames={"Mail": "email"}), "--map: no column named 'Mail'"),
        (["user_id", "age"], CsvOptions(types={"Age": "int"}), "--type: no column is named 'Age'"),
        (["user_id", "a", "b"], CsvOptions(renames={"a": "x", "b": "x"}), "would both become 'x'"),
        (["user_id", "a"], CsvOptions(ignore=frozenset({"b"})), "--ignore: no column"),
    ],
)  # fmt: skip
def test_header_mistakes_fail_at_start(header: list[str], options: CsvOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_columns(header, options)


def test_ignored_columns_are_left_out() -> None:
    plan = plan_columns(["user_id", "secret", "plan", ""], CsvOptions(ignore=frozenset({"secret", ""})))
    assert row_to_record(["user-00001", "s3cr3t", "pro", "x"], plan) == {
        "user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}},
    }  # fmt: skip


# -- fingerprints ---------------------------------------------------------------------------------------
def test_fingerprints_ignore_key_order_and_see_any_change() -> None:
    a = {"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro", "age": 3}}}
    b = {"user_properties": {"$set": {"age": 3, "plan": "pro"}}, "user_id": "user-00001"}
    c = {"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro", "age": 4}}}
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    assert len(fingerprint(a)) == DIGEST_BYTES


@pytest.mark.parametrize(
    ("props", "can_skip"),
    [
        ({"plan": "pro"}, True), ({"$set": {"a": 1}}, True), ({"$setOnce": {"a": 1}, "$unset": {"b": "-"}}, True),
        ({"$clearAll": "-"}, True), ({"$preInsert": {"t": "x"}, "$remove": {"u": "y"}}, True),
        ({"$add": {"n": 1}}, False), ({"$set": {"a": 1}, "$append": {"t": "x"}}, False),
        ({"$prepend": {"t": 1}}, False), (None, True),
    ],
)  # fmt: skip
def test_only_records_that_repeat_harmlessly_may_be_skipped(props: Any, can_skip: bool) -> None:
    record = {"user_id": "user-00001", **({"user_properties": props} if props is not None else {})}
    assert skippable(record) is can_skip
    assert (fingerprint_for_skip(record) != b"") is can_skip


# -- job decisions --------------------------------------------------------------------------------------
FILE = {"source": "/data/users.csv", "size": "100", "mtime_ns": "7", "format": "csv"}
RUNNING = JobState(run="r1", state="running", line=500, enqueued=490, **FILE)  # type: ignore[arg-type]
FINISHED = JobState(run="r1", state="finished", line=900, enqueued=890, **FILE)  # type: ignore[arg-type]
CHANGED = {**FILE, "size": "120"}


@pytest.mark.parametrize(
    ("stored", "current", "resume", "restart", "action", "note"),
    [
        (None, FILE, False, False, Action.START, ""),
        (None, FILE, True, False, Action.START, "no progress recorded"),
        (None, FILE, False, True, Action.START, ""),
        (RUNNING, FILE, True, False, Action.RESUME, "resuming after line 500"),
        (RUNNING, FILE, False, True, Action.START, "starting over"),
        (RUNNING, CHANGED, False, True, Action.START, "starting over"),
        (FINISHED, FILE, False, False, Action.START, "finished earlier; starting over"),
        (FINISHED, FILE, True, False, Action.DONE, "nothing to resume"),
        (FINISHED, FILE, False, True, Action.START, "starting over"),
    ],
)  # fmt: skip
def test_what_a_run_does(stored: JobState | None, current: dict[str, str], resume: bool, restart: bool,
                         action: Action, note: str) -> None:  # fmt: skip
    decision = decide("j", stored, current, resume=resume, restart=restart)
    assert decision.action is action
    assert note in decision.note


@pytest.mark.parametrize(
    ("current", "resume", "message"),
    [(FILE, False, "interrupted at line 500.*--resume.*--restart"), (CHANGED, True, "would skip the wrong lines")],
)
def test_runs_that_must_not_go_on(current: dict[str, str], resume: bool, message: str) -> None:
    with pytest.raises(ImportJobError, match=message):
        decide("j", RUNNING, current, resume=resume, restart=False)


def test_default_job_names_follow_the_file_and_its_version() -> None:
    a = default_job_name(SourceInfo("users.csv", "/data/users.csv", 100, 7))
    assert a is not None and a.startswith("users.csv-")
    assert a == default_job_name(SourceInfo("./users.csv", "/data/users.csv", 100, 7))
    assert a != default_job_name(SourceInfo("users.csv", "/data/users.csv", 100, 8))
    assert a != default_job_name(SourceInfo("users.csv", "/data/users.csv", 101, 7))
    assert default_job_name(SourceInfo("-")) is None
    assert default_job_name(SourceInfo("x", "/d/we ird;name.csv", 1, 1)).startswith("we_ird_name.csv-")  # type: ignore[union-attr]


# -- waiting and reporting ------------------------------------------------------------------------------
def test_waits_while_full_double_and_stay_bounded() -> None:
    waits = [full_wait_s(n) for n in range(60)]
    assert waits[:4] == [0.1, 0.2, 0.4, 0.8]
    assert waits == sorted(waits)
    assert max(waits) == FULL_WAIT_CAP_S


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.42, "0.4s"), (9.96, "10.0s"), (42.4, "42s"), (185, "3m05s"), (7440, "2h04m")]
)
def test_durations_read_well(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_progress_and_summary_text() -> None:
    snap = Snapshot(lines=3000, enqueued=2900, rejected=60, skipped=40, lines_this_run=2000, elapsed_s=2.0,
                    consumed=600, consumed_at_start=200, total=1000)  # fmt: skip
    assert eta_s(snap) == 2.0  # 400 bytes in 2 s, 400 left
    line = progress_line(snap)
    assert line.startswith("progress: 3,000 lines read, 2,900 enqueued, 60 rejected, 40 skipped unchanged")
    assert "1,000 lines/s" in line and "60.0% of 1,000 bytes" in line and "ETA 2.0s" in line
    stdin = Snapshot(10, 10, 0, 0, 10, 1.0)
    assert eta_s(stdin) is None and "ETA" not in progress_line(stdin)
    summary = summary_line(snap, "users-1", resumed_from=1000)
    assert summary.startswith("2,900 enqueued, 60 rejected, 3,000 lines read, 40 skipped unchanged; 2.0s")
    assert "resumed after line 1,000, 2,000 lines this run; job users-1" in summary


def test_a_reject_entry_keeps_the_line_and_why() -> None:
    error = InvalidRecord("user_id", "too_short", "must be at least 5 characters, got 3")
    entry = reject_entry(7, error, b'{"user_id": "usr", "x": "\xff"}\r\n')
    assert entry == (b'{"line":7,"field":"user_id","rule":"too_short","reason":"must be at least 5 characters, '
                     b'got 3","text":"{\\"user_id\\": \\"usr\\", \\"x\\": \\"\xef\xbf\xbd\\"}"}\n')  # fmt: skip


RESUME_COMMANDS: list[tuple[str, dict[str, Any], str]] = [
    # path, the options given on the command line, the command that goes on
    ("/data/users.jsonl", {}, "identify-queue import /data/users.jsonl --resume"),
    ("/data/u s.csv", {"maps": ("uid:user_id", "E mail:email"), "types": ("age=int",), "skip_unchanged": True},
     "identify-queue import '/data/u s.csv' --map uid:user_id --map 'E mail:email' --type age=int --skip-unchanged "
     "--resume"),
    ("-", {"fmt": "csv", "job": "nightly", "chunk_size": 500, "restart": True},
     "identify-queue import - --format csv --job nightly --chunk-size 500 --resume"),
    ("/d/x.jsonl", {"resume": True, "rejects": "/d/rejects.jsonl", "skip_unchanged": False},
     "identify-queue import /d/x.jsonl --rejects /d/rejects.jsonl --resume"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "given", "command"), RESUME_COMMANDS)
def test_the_resume_command_repeats_the_flags_given(path: str, given: dict[str, Any], command: str) -> None:
    assert resume_command(path, given) == command


INTERRUPTED: list[tuple[str, str | None, Any, str]] = [
    ("/d/x.jsonl", None, None, "cannot be resumed"),
    ("/d/x.jsonl", "x", None, "before any line was enqueued; nothing is recorded: run the same command again"),
    ("/d/x.jsonl", "x", JobState("r", "running", line=12_000, enqueued=11_990, rejected=10),
     "interrupted at line 12,000 (11,990 enqueued, 10 rejected), recorded in job x; go on with: "
     "identify-queue import /d/x.jsonl --resume"),
    ("-", "x", JobState("r", "running", line=5), "go on by giving the same input again to: identify-queue import - "),
]  # fmt: skip


@pytest.mark.parametrize(("path", "job", "state", "says"), INTERRUPTED)
def test_an_interrupted_import_says_where_and_how_to_go_on(path: str, job: str | None, state: Any, says: str) -> None:
    assert says in interrupted_message(path, {}, job, state)


SNAP = Snapshot(lines=123_456, enqueued=120_000, rejected=3_456, skipped=0, lines_this_run=123_456, elapsed_s=2.0,
                consumed=500, consumed_at_start=0, total=1000)  # fmt: skip
BAR_LINES: list[tuple[Snapshot, int, str]] = [
    # snapshot, terminal width, the line drawn (at most width - 1 characters)
    (SNAP, 120, "61,728 lines/s | 123,456 lines, 120,000 enqueued, 3,456 rejected, 0 unchanged | 50% ETA 2.0s "
                "[############............]"),
    (SNAP, 100, "61,728 lines/s | 123,456 lines, 120,000 enqueued, 3,456 rejected, 0 unchanged | 50% ETA 2.0s"),
    (SNAP, 90, "61,728 lines/s | 123,456 lines, 120,000 enqueued, 3,456 rejected, 0 unchanged | 50%"),
    (SNAP, 80, "61,728 lines/s | 123,456 lines, 120,000 enqueued, 3,456 rejected | 50%"),
    (SNAP, 70, "61,728 lines/s | 123,456 lines, 120,000 enqueued | 50% [######......]"),
    (SNAP, 40, "61,728 lines/s | 123,456 lines, 120,000"),
    (Snapshot(10, 10, 0, 0, 10, 1.0), 80, "10 lines/s | 10 lines, 10 enqueued, 0 rejected, 0 unchanged"),  # stdin
]  # fmt: skip


@pytest.mark.parametrize(("snap", "width", "line"), BAR_LINES)
def test_the_progress_line_fits_the_terminal_numbers_first(snap: Snapshot, width: int, line: str) -> None:
    drawn = bar_line(snap, width)
    assert drawn == line
    assert len(drawn) <= width - 1


@pytest.mark.parametrize(("columns", "width"), [(None, 80), (0, 80), (100, 100), (30, 30)])
def test_a_terminal_without_a_size_gets_the_fallback_width(columns: int | None, width: int) -> None:
    assert terminal_width(columns) == width
