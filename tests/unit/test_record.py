"""Validation: a table of good and bad identifications, each bad one naming its field and rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.contract.errors import InvalidRecord
from producers.record import FIELDS, MAX_STRING, check, repeated_key, validate, validate_json

U = "user-0001"
LONG = "x" * 1025


def nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


GOOD: list[dict[str, Any]] = [
    {"user_id": U},
    {"device_id": "device-abcdef"},
    {"user_id": U, "device_id": "device-abcdef"},
    {"user_id": U, "user_properties": {"plan": "pro", "age": 31, "ratio": 0.5, "vip": True, "nick": None}},
    {"user_id": U, "user_properties": {"$set": {"a": 1}, "$setOnce": {"b": 2}, "$add": {"c": 3},
                                        "$append": {"d": "x"}, "$prepend": {"e": ["y"]}, "$unset": {"f": "-"},
                                        "$preInsert": {"g": 1}, "$postInsert": {"h": 2}, "$remove": {"i": 3}}},
    {"user_id": U, "user_properties": {"$clearAll": "-"}},
    {"user_id": U, "user_properties": {"$add": {"score": -2.5}}},
    {"user_id": U, "user_properties": {"tags": ["a", "b", {"deep": [1, 2]}]}},
    {"user_id": U, "user_properties": nest(40)},  # user_properties is level 1; 40 levels in all
    {"user_id": U, "groups": {"company": "acme", "team": ["red", "blue"]}},
    {"user_id": U, "groups": {f"t{i}": [f"g{i}a", f"g{i}b"] for i in range(5)}},
    {"user_id": U, **{f: "value" for f in FIELDS if f not in ("user_id", "device_id", "user_properties", "groups")}},
    {"user_id": U, "city": "Zürich", "user_properties": {"greeting": "grüezi 👋"}},
    {"user_id": "x" * 1024},
    {"user_id": U, "user_properties": {"big": 2**63 - 1, "neg": -(2**63)}},
    {"user_id": U, "user_properties": {"$set": {"s": "x" * 1024, "big": 2**64 - 1, "neg": -(2**63), "t": True,
                                                "none": None, "f": 0.5, "l": [1], "o": {"a": "ü"}}}},
]  # fmt: skip


@pytest.mark.parametrize("record", GOOD)
def test_good_records_validate_and_encode_to_themselves(record: dict[str, Any]) -> None:
    valid = validate(record)
    assert orjson.loads(valid.data) == record
    assert valid.user_key == (f"u:{record['user_id']}" if "user_id" in record else f"d:{record['device_id']}")


BAD: list[tuple[Any, str, str]] = [
    # record, field path, rule
    ([{"user_id": U}], "", "not_object"),
    ({}, "", "missing_id"),
    ({"user_id": None, "device_id": None}, "", "missing_id"),
    ({"userId": U}, "userId", "unknown_field"),
    ({"user_id": U, "event_type": "x"}, "event_type", "unknown_field"),
    ({"user_id": 12345}, "user_id", "not_string"),
    ({"user_id": "abcd"}, "user_id", "too_short"),
    ({"device_id": "1234"}, "device_id", "too_short"),
    ({"user_id": LONG}, "user_id", "too_long"),
    ({"user_id": "undefined"}, "user_id", "reserved_id"),
    ({"device_id": "00000000-0000-0000-0000-000000000000"}, "device_id", "reserved_id"),
    ({"user_id": "NULL_", "device_id": "Anonymous"}, "device_id", "reserved_id"),
    ({"user_id": U, "platform": 7}, "platform", "not_string"),
    ({"user_id": U, "paying": True}, "paying", "not_string"),
    ({"user_id": U, "city": LONG}, "city", "too_long"),
    ({"user_id": U, "user_properties": "plan=pro"}, "user_properties", "not_object"),
    ({"user_id": U, "user_properties": {"$set": {"a": 1}, "b": 2}}, "user_properties.b", "mixed_operations"),
    ({"user_id": U, "user_properties": {"a": 1, "$set": {"b": 2}}}, "user_properties.$set", "mixed_operations"),
    ({"user_id": U, "user_properties": {"$setAll": {"a": 1}}}, "user_properties.$setAll", "unknown_operation"),
    ({"user_id": U, "user_properties": {"$set": {"a": 1}, "$unset": {"a": "-"}}}, "user_properties.$unset.a",
     "duplicate_property"),
    ({"user_id": U, "user_properties": {"$set": ["a"]}}, "user_properties.$set", "not_object"),
    ({"user_id": U, "user_properties": {"$add": {"n": "1"}}}, "user_properties.$add.n", "not_number"),
    ({"user_id": U, "user_properties": {"$add": {"n": True}}}, "user_properties.$add.n", "not_number"),
    ({"user_id": U, "user_properties": {"$clearAll": "-", "$set": {"a": 1}}}, "user_properties.$clearAll",
     "clear_all_not_alone"),
    ({"user_id": U, "user_properties": nest(41)}, "user_properties" + ".n" * 40, "too_deep"),
    ({"user_id": U, "user_properties": {"l": [[[[1]]]], "x": nest(40)}}, "user_properties.x" + ".n" * 39,
     "too_deep"),
    ({"user_id": U, "user_properties": {"a": {"b": LONG}}}, "user_properties.a.b", "too_long"),
    ({"user_id": U, "user_properties": {LONG: 1}}, "user_properties." + LONG, "too_long"),
    ({"user_id": U, "user_properties": {"": 1}}, 'user_properties.""', "empty_key"),
    ({"user_id": U, "user_properties": {"x": [1, float("nan")]}}, "user_properties.x[1]", "not_finite"),
    ({"user_id": U, "user_properties": {"x": float("inf")}}, "user_properties.x", "not_finite"),
    ({"user_id": U, "user_properties": {"x": 2**64}}, "user_properties.x", "out_of_range"),
    ({"user_id": U, "user_properties": {"x": {1, 2}}}, "user_properties.x", "not_json"),
    ({"user_id": U, "user_properties": {"x": b"bytes"}}, "user_properties.x", "not_json"),
    ({"user_id": U, "user_properties": {"x": "\ud800"}}, "user_properties.x", "bad_utf8"),
    ({"user_id": U, "groups": ["acme"]}, "groups", "not_object"),
    ({"user_id": U, "groups": {f"t{i}": "g" for i in range(6)}}, "groups", "too_many_group_types"),
    ({"user_id": U, "groups": {"a": [f"g{i}" for i in range(6)], "b": [f"h{i}" for i in range(5)]}}, "groups",
     "too_many_groups"),
    ({"user_id": U, "groups": {"company": ["acme", 3]}}, "groups.company[1]", "not_string"),
    ({"user_id": U, "groups": {"company": LONG}}, "groups.company", "too_long"),
    # one operation: its properties are checked inline (record.py's _check_operations), the same way
    ({"user_id": U, "user_properties": {"$set": {"a": LONG}}}, "user_properties.$set.a", "too_long"),
    ({"user_id": U, "user_properties": {"$set": {"a": "\ud800"}}}, "user_properties.$set.a", "bad_utf8"),
    ({"user_id": U, "user_properties": {"$set": {"a": 2**64}}}, "user_properties.$set.a", "out_of_range"),
    ({"user_id": U, "user_properties": {"$set": {"a": -(2**63) - 1}}}, "user_properties.$set.a", "out_of_range"),
    ({"user_id": U, "user_properties": {"$set": {"a": float("nan")}}}, "user_properties.$set.a", "not_finite"),
    ({"user_id": U, "user_properties": {"$set": {"a": {"b": LONG}}}}, "user_properties.$set.a.b", "too_long"),
    ({"user_id": U, "user_properties": {"$set": {LONG: 1}}}, "user_properties.$set." + LONG, "too_long"),
    ({"user_id": U, "user_properties": {"$set": {"": 1}}}, 'user_properties.$set.""', "empty_key"),
    ({"user_id": U, "user_properties": {"$set": {"\ud800": 1}}}, "user_properties.$set.\ud800", "bad_utf8"),
    ({"user_id": U, "user_properties": {"$set": {1: 1}}}, "user_properties.$set.1", "bad_key"),
    ({"user_id": U, "user_properties": {"$set": {"x": b"bytes"}}}, "user_properties.$set.x", "not_json"),
    ({"user_id": U, "user_properties": {"$unset": {"x": {1, 2}}}}, "user_properties.$unset.x", "not_json"),
    ({"user_id": U, "user_properties": {"$setOnce": {"a": [1, [2, float("inf")]]}}}, "user_properties.$setOnce.a[1][1]",
     "not_finite"),
]  # fmt: skip


@pytest.mark.parametrize(("record", "path", "rule"), BAD)
def test_bad_records_name_the_field_and_the_rule(record: Any, path: str, rule: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validate(record)
    assert (caught.value.field, caught.value.rule) == (path, rule)
    assert str(caught.value).startswith(f"{path or 'identification'}: ")


def test_the_minimum_id_length_is_configurable() -> None:
    with pytest.raises(InvalidRecord):
        validate({"user_id": "abc"})
    assert validate({"user_id": "abc"}, min_id_length=3).user_key == "u:abc"


def test_the_record_size_cap_applies_to_the_encoded_record() -> None:
    record = {"user_id": U, "user_properties": {f"p{i}": "v" * 1000 for i in range(10)}}
    assert validate(record, max_record_bytes=20_000)
    with pytest.raises(InvalidRecord) as caught:
        validate(record, max_record_bytes=5_000)
    assert caught.value.rule == "too_large"


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b'{"user_id": "user-1", "user_properties": {"x": NaN}}', "bad_json"),
        (b'{"user_id": "user-1", "user_properties": {"x": Infinity}}', "bad_json"),
        (b'{"user_id": "user-\xff\xfe"}', "bad_json"),
        (b'{"user_id": "user-1"', "bad_json"),
        (b"[]", "not_object"),
    ],
)
def test_json_input_is_strict(line: bytes, rule: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validate_json(line)
    assert caught.value.rule == rule


def test_an_error_in_a_sequence_says_which_record() -> None:
    error = InvalidRecord("user_id", "too_short", "must be at least 5 characters").at(7)
    assert str(error) == "record 7: user_id: must be at least 5 characters"


UNKNOWN_FIELD_HINTS: list[tuple[str, str]] = [
    # a field the producer refuses, and what the refusal says (never a guess that misleads)
    ("session_id", "belongs to events"),
    ("event_properties", "belongs to events"),
    ("location_lat", "belongs to events"),
    ("sessionId", "belongs to events"),
    ("userId", "(write it user_id)"),
    ("osVersion", "(write it os_version)"),
    ("user_propertes", "(did you mean user_properties?)"),
    ("platfrom", "(did you mean platform?)"),
    ("emial", "known fields: user_id, device_id"),
    ("ses", "known fields: user_id, device_id"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "says"), UNKNOWN_FIELD_HINTS)
def test_an_unknown_field_is_refused_with_a_hint_that_is_right_or_none(name: str, says: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        validate({"user_id": U, name: 1})
    assert (caught.value.field, caught.value.rule) == (name, "unknown_field")
    assert says in caught.value.detail


REPEATED: list[tuple[bytes, tuple[str, str] | None]] = [
    # JSON text, the first key given twice (the object's path, the key)
    (b'{"user_id":"user-1","user_id":"user-2"}', ("", "user_id")),
    (b'{"user_id": "user-1", "user_properties": {"$set": {"a": 1, "a": 2}}}', ("user_properties.$set", "a")),
    (b'[{"user_id":"u1"},{"g":[{"x":1,"x":1}]}]', ("[1].g[0]", "x")),
    (b'{"user_id" :"u1","user_id": "u2"}', ("", "user_id")),  # a space before the colon: the slow reading
    (b'{"a":"12:30","b":"http://x"}', None),  # colons inside strings
    (b'{"a":"say \\"k\\":1","k":2}', None),  # an escaped quote before a colon, inside a string
    (b'{"a\\u0062":1,"ab":2}', ("", "ab")),  # the same key spelt two ways
]  # fmt: skip


@pytest.mark.parametrize(("text", "found"), REPEATED)
def test_a_key_given_twice_is_found_with_its_path(text: bytes, found: tuple[str, str] | None) -> None:
    assert repeated_key(text, orjson.dumps(orjson.loads(text))) == found
    assert repeated_key(text.decode(), orjson.dumps(orjson.loads(text))) == found


# -- the encoded record's shortcut ----------------------------------------------------------------
NAMES = st.sampled_from(["a", "plan", "", "ü", "b\u00e9", "$set", "x" * 40, "dup"])
SCALARS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1), st.sampled_from([2**63, -(2**63), 2**64 - 1]),
    st.text(max_size=30), st.sampled_from(["", "null", "ü" * 5]), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(NAMES, SCALARS, max_size=3),
                   st.tuples(SCALARS))  # fmt: skip
OPERATIONS = st.sampled_from(["$set", "$setOnce", "$add", "$unset", "$append", "$clearAll", "$bogus", "plain"])
RECORDS = st.fixed_dictionaries(
    {"user_id": st.one_of(st.sampled_from([U, "null", "abc", "user-ü-0001", "0"]), st.integers(), st.none())},
    optional={
        "device_id": st.sampled_from(["device-abcdef", "dev", "ünïcode-device"]),
        "platform": st.one_of(st.sampled_from(["Web", "iOS ü", ""]), st.integers()),
        "user_properties": st.one_of(
            st.dictionaries(OPERATIONS, st.one_of(st.dictionaries(NAMES, VALUES, max_size=4), SCALARS), max_size=3),
            st.dictionaries(NAMES, VALUES, max_size=3), st.integers(),
        ),
    },
)  # fmt: skip


def judged(record: Any, **options: Any) -> tuple[Any, ...]:
    try:
        return ("valid", check(record, **options))
    except InvalidRecord as exc:
        return ("invalid", exc.field, exc.rule, exc.detail)


@settings(max_examples=400, deadline=None)
@given(record=RECORDS)
def test_a_short_encoded_record_is_judged_as_the_full_check_judges_it(record: dict[str, Any]) -> None:
    # validate skips lengths, encodings and integer ranges when orjson wrote the record in at most
    # MAX_STRING bytes: for every such record the answer must be the full check's
    try:
        short = len(orjson.dumps(record)) <= MAX_STRING
    except TypeError:
        short = False
    assert judged(record, encoded=short) == judged(record)
    for parsed in (False, True):  # these values are all safe to encode first (no enum, no datetime)
        try:
            assert ("valid", validate(record, parsed=parsed).user_key) == judged(record)
        except InvalidRecord as exc:
            assert ("invalid", exc.field, exc.rule, exc.detail) == judged(record)
        except TypeError:
            assert judged(record)[0] == "valid"  # orjson cannot write it and no rule refuses it: as before


@pytest.mark.parametrize("size", [MAX_STRING - 60, MAX_STRING - 40, MAX_STRING + 1])
def test_records_around_the_shortcut_s_size_validate_the_same(size: int) -> None:
    text = "x" * size
    for value in (text, text[:-1] + "\ud800"):
        record = {"user_id": U, "user_properties": {"$set": {"s": value}}}
        try:
            assert ("valid", validate(record, parsed=True).user_key) == judged(record)
        except InvalidRecord as exc:
            assert ("invalid", exc.field, exc.rule, exc.detail) == judged(record)


REFUSED_BY_TYPE = """
import datetime, enum
from producers.contract.errors import InvalidRecord
from producers.record import validate

class Raising(datetime.tzinfo):
    def utcoffset(self, dt):
        raise RuntimeError("boom")

class Plan(enum.Enum):
    PRO = 1

    @property
    def value(self):
        raise RuntimeError("boom")

for record in ({"user_id": "user-0001", "platform": datetime.datetime(2020, 1, 1, tzinfo=Raising())},
               {"user_id": "user-0001", "user_properties": {"$set": {"plan": Plan.PRO}}}):
    try:
        validate(record)
    except InvalidRecord as exc:
        print(exc.field, exc.rule)
"""


def test_objects_orjson_would_run_the_code_of_are_refused_by_type_first() -> None:
    # orjson encodes enums and datetimes itself, running their code, and an exception raised there
    # crashes the interpreter (orjson 3.13): a Python object is checked before it is encoded (only
    # parsed records are encoded first).  In a child process, so that a crash fails this test only.
    done = subprocess.run([sys.executable, "-c", REFUSED_BY_TYPE], check=False, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.splitlines() == ["platform not_string", "user_properties.$set.plan not_json"]
