"""The identification record: its fields, Amplitude's rules for it, and its encoding.

``validate(obj)`` either returns a ``ValidRecord`` (the user key it is sharded by, and the exact JSON
bytes that will be sent) or raises ``InvalidRecord`` naming the field path and the rule.  The rules
follow the Identify API page and the HTTP V2 rules Amplitude says apply to it (see AMPLITUDE.md):

- ``user_id`` or ``device_id`` is required; ids are strings of at least ``min_id_length``
  characters (5 by default) and not one of the ids Amplitude refuses ("null", "0", ...);
- ``user_properties`` holds plain properties or operations, never both; operations are the known
  ones; a property appears in one operation only; nesting is at most 40 levels;
- ``groups`` has at most 5 group types and 10 groups in all;
- every string (keys included) is at most 1,024 characters and valid UTF-8; numbers are finite and
  fit in 64 bits; only JSON values are allowed; the encoded record is at most ``max_record_bytes``.

The same function serves producers, the HTTP ingest endpoint and the local Amplitude-compatible
server, so the three cannot disagree.  It is on every producer's hot path: the happy path builds no
strings, and the field path is assembled only while an error unwinds.  ``check(obj)`` applies the
rules without encoding, for callers that keep the JSON they received (the local server).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from producers.contract.errors import InvalidRecord

ID_FIELDS = ("user_id", "device_id")
DEVICE_FIELDS = (
    "app_version", "platform", "os_name", "os_version", "device_brand", "device_manufacturer",
    "device_model", "carrier", "country", "region", "city", "dma", "language", "paying",
    "start_version",
)  # fmt: skip
FIELDS = (*ID_FIELDS, "user_properties", "groups", *DEVICE_FIELDS)
_FIELD_SET = frozenset(FIELDS)

#: Keys of an *event* in Amplitude's HTTP V2 API that an identification does not have.  Clients
#: built for both endpoints send some of them to /identify as well (the npm ``amplitude`` client
#: adds ``session_id`` from its options, and its documented identify example has
#: ``event_properties``); Amplitude ignores them there.  The Python producer refuses them, naming
#: them as event fields; the ingest endpoint drops and counts them.
EVENT_FIELDS = frozenset(
    {"event_type", "event_properties", "group_properties", "time", "session_id", "insert_id", "event_id",
     "location_lat", "location_lng", "ip", "idfa", "idfv", "adid", "android_id", "android_app_set_id",
     "version_name", "library", "plan", "ingestion_metadata", "price", "quantity", "revenue", "productId",
     "revenueType", "currency", "partner_id", "user_agent",
     # the camelCase spellings client libraries accept for them
     "eventType", "eventProperties", "groupProperties", "sessionId", "insertId", "eventId", "locationLat",
     "locationLng", "versionName", "androidId", "appSetId", "partnerId", "ingestionMetadata", "userAgent"}
)  # fmt: skip

#: The camelCase spelling of each identification field, as JavaScript clients write them.
CAMEL_CASE = {"".join(w.capitalize() if i else w for i, w in enumerate(f.split("_"))): f for f in FIELDS if "_" in f}
_STRING_FIELDS = frozenset(DEVICE_FIELDS)

#: Operations on user properties.  ``$clearAll`` wipes every property and stands alone.
OPERATIONS = frozenset(
    {"$set", "$setOnce", "$add", "$append", "$prepend", "$unset", "$preInsert", "$postInsert", "$remove",
     "$clearAll"}
)  # fmt: skip

MAX_STRING = 1024
MAX_DEPTH = 40
MAX_GROUP_TYPES = 5
MAX_GROUPS = 10
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

#: Ids HTTP V2 refuses as placeholders rather than real identities (compared case-insensitively).
RESERVED_IDS = frozenset(
    {"anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "<nil>", "(null)",
     "0", "-1", "00000000-0000-0000-0000-000000000000", "lmy47d", "[]", "{}", "''", '""'}
)  # fmt: skip


class ValidRecord(NamedTuple):
    """A record that passed every rule: the key it is sharded and ordered by, and its JSON bytes."""

    user_key: str
    data: bytes


def user_key_of(user_id: str | None, device_id: str | None) -> str:
    """The identity a record is ordered by: its user_id, else its device_id.

    The prefixes keep a user id and a device id that happen to be equal apart.
    """
    return f"u:{user_id}" if user_id else f"d:{device_id}"


@dataclass
class _Bad(Exception):
    """Raised inside the walk; each frame it unwinds through prepends its key to ``parts``."""

    rule: str
    message: str
    parts: list[str]

    def push(self, part: str) -> _Bad:
        self.parts.insert(0, part)
        return self


def _path(parts: list[str]) -> str:
    out = ""
    for part in parts:
        if part.startswith("["):
            out += part
        else:
            out += f".{part}" if out else part
    return out


def validate(
    obj: Any, *, min_id_length: int = 5, max_record_bytes: int = 64 * 1024, parsed: bool = False
) -> ValidRecord:
    """Check ``obj`` against Amplitude's rules; return its user key and encoded bytes.

    ``parsed``: ``obj`` came from a JSON or CSV parser, so it holds plain JSON values only.  Such a
    record is encoded first, and when orjson wrote it (so its strings are valid UTF-8 and its
    integers fit in 64 bits) in no more than ``MAX_STRING`` bytes (so no string in it, key or value,
    can be longer than that), the checks of lengths, encodings and ranges are skipped: those
    checks were a tenth of what validating an import's line cost (bench/stages.py).  Any other
    object is checked first: orjson runs the code of the objects it encodes natively (enums,
    dataclasses, datetimes), and an exception raised there crashes the process (orjson 3.13).
    """
    if not parsed:
        user_key = check(obj, min_id_length=min_id_length)
        data = compact_json(obj)
    else:
        try:
            data = compact_json(obj)
        except TypeError:  # orjson.JSONEncodeError is one: the full check names what is wrong
            check(obj, min_id_length=min_id_length)
            raise
        user_key = check(obj, min_id_length=min_id_length, encoded=len(data) <= MAX_STRING)
    if len(data) > max_record_bytes:
        raise InvalidRecord("", "too_large", f"encodes to {len(data)} bytes, more than the {max_record_bytes} allowed")
    return ValidRecord(user_key, data)


def check(obj: Any, *, min_id_length: int = 5, encoded: bool = False) -> str:
    """Check ``obj`` against Amplitude's rules (all but the size cap); return its user key.

    ``encoded``: orjson encoded ``obj`` in at most ``MAX_STRING`` bytes, so lengths, encodings and
    integer ranges are known to be within the rules (``validate``).
    """
    if type(obj) is not dict:
        raise InvalidRecord("", "not_object", f"must be a JSON object, got {_type_name(obj)}")
    try:
        return _check_top(obj, min_id_length, encoded)
    except _Bad as bad:
        raise InvalidRecord(_path(bad.parts), bad.rule, bad.message) from None


def compact_json(obj: Any) -> bytes:
    """``obj`` as JSON bytes, to be kept a while (a producer's chunk, a drainer's claim).

    A copy of exactly the right size: orjson's own output buffer is allocated large and shrunk in
    place, and holding a thousand of them made each dumps cost 2.2 us instead of 0.3
    (bench/stages.py).
    """
    return bytes(memoryview(orjson.dumps(obj)))


def validate_json(line: bytes | str, **limits: int) -> ValidRecord:
    """Parse one JSON document (strict: UTF-8, no NaN, no key twice in an object) and validate it."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("", "bad_json", f"not valid JSON: {exc}") from None
    record = validate(obj, **limits, parsed=True)
    check_unique_keys(line, record.data)
    return record


# -- keys given twice -------------------------------------------------------------------------------
def check_unique_keys(text: bytes | str, encoded: bytes) -> None:
    """InvalidRecord (``duplicate_key``) when an object of the JSON ``text`` gives a key twice;
    ``encoded`` is orjson's compact encoding of what was parsed from it (see ``repeated_key``)."""
    found = repeated_key(text, encoded)
    if found is not None:
        path, key = found
        raise InvalidRecord(f"{path}.{key}" if path else key, "duplicate_key",
                            f"key {key!r} appears twice in one object (JSON would keep only the last)")  # fmt: skip


def repeated_key(text: bytes | str, encoded: bytes) -> tuple[str, str] | None:
    """The first key given twice in one object of the JSON ``text``: (the object's path, the key).

    JSON parsers, orjson included, keep the last value silently, so a record with two user_ids
    would be sent for one of them without a word.  ``encoded`` is orjson's compact encoding of what
    was parsed from ``text``.  Text that starts with that encoding is it (a parse that passed leaves
    only blanks after it), so nothing was dropped: what exports written by orjson-like encoders
    show.  Otherwise, outside strings a colon follows each key and nothing else, and inside strings,
    text without a backslash is encoded byte for byte as it was written: so when ``text`` has no
    backslash, equal colon counts mean equal key counts.  These are C-speed tests; anything else is
    settled by the exact, slow reading (``duplicate_key``).
    """
    raw = text if type(text) is bytes else str(text).encode("utf-8", "surrogatepass")
    if raw.startswith(encoded) or (b"\\" not in raw and raw.count(b":") == encoded.count(b":")):
        return None  # the text is its own encoding (then nothing was dropped), or as many keys
    return duplicate_key(raw)


class _Repeated(dict[str, Any]):
    """A JSON object that gave ``key`` more than once."""

    key = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            repeated = _Repeated(pairs)
            repeated.key = key
            return repeated
        obj[key] = value
    return obj


def duplicate_key(raw: bytes | str) -> tuple[str, str] | None:
    """The first key given twice in one object of the JSON ``raw``: (the object's path, such as
    ``[2].user_properties.$set``, and the key); None when none is, or ``raw`` is not JSON."""
    import json  # the exact reading is the rare path: only it needs the slower parser

    try:
        value = json.loads(raw, object_pairs_hook=_object)
    except ValueError:
        return None
    return _first_repeated(value, [])


def _first_repeated(value: Any, parts: list[str]) -> tuple[str, str] | None:
    if type(value) is _Repeated:
        return _path(parts), value.key
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _first_repeated(item, [*parts, f"[{key}]" if type(key) is int else str(key)])
        if found is not None:
            return found
    return None


def _check_top(obj: dict[str, Any], min_id_length: int, encoded: bool) -> str:
    for name, value in obj.items():
        if name in _STRING_FIELDS:
            if value is not None and (
                type(value) is not str or (not encoded and (len(value) > MAX_STRING or not value.isascii()))
            ):
                if type(value) is not str:
                    raise _Bad("not_string", f"must be a string, got {_type_name(value)}", [name])
                _check_string(value, name)
        elif name not in _FIELD_SET:
            _unknown_field(str(name))
    user_id = _check_id(obj, "user_id", min_id_length, encoded)
    device_id = _check_id(obj, "device_id", min_id_length, encoded)
    if user_id is None and device_id is None:
        raise _Bad("missing_id", "user_id or device_id is required", [])
    props = obj.get("user_properties")
    if props is not None:
        _check_properties(props, encoded)
    groups = obj.get("groups")
    if groups is not None:
        _check_groups(groups)
    return user_key_of(user_id, device_id)


def _unknown_field(name: str) -> None:
    raise _Bad("unknown_field", unknown_field_message(name), [name])


def unknown_field_message(name: str) -> str:
    """Why ``name`` is not a field, with a hint only where the hint is sure to be right.

    A loose match misleads (``session_id`` is not a misspelt ``os_version``), so a near spelling
    is offered only when it is very close, and the names of event fields and camelCase spellings
    are recognised by list.
    """
    if name in EVENT_FIELDS:
        return ("unknown field: it belongs to events (HTTP V2 /2/httpapi), not to identifications, "
                "and Amplitude ignores it in /identify; leave it out")  # fmt: skip
    if name in CAMEL_CASE:
        return f"unknown field (write it {CAMEL_CASE[name]})"
    hint = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.8)
    if hint:
        return f"unknown field (did you mean {hint[0]}?)"
    return f"unknown field; known fields: {', '.join(FIELDS)}"


def _check_id(obj: dict[str, Any], name: str, min_length: int, encoded: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad("not_string", f"must be a string, got {_type_name(value)}", [name])
    if len(value) < min_length:
        raise _Bad("too_short", f"must be at least {min_length} characters, got {len(value)}", [name])
    if not encoded and (len(value) > MAX_STRING or not value.isascii()):
        _check_string(value, name)
    if value.lower() in RESERVED_IDS:
        raise _Bad("reserved_id", f"{value!r} is a placeholder Amplitude refuses as an id", [name])
    return value


def _check_string(value: str, name: str | None) -> None:
    """Length and UTF-8; ``name`` is the path part to report, None when the caller adds it."""
    parts = [] if name is None else [name]
    if len(value) > MAX_STRING:
        raise _Bad("too_long", f"longer than {MAX_STRING} characters ({len(value)})", parts)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Bad("bad_utf8", "not valid UTF-8 (lone surrogate)", parts) from None


def _check_properties(props: Any, encoded: bool) -> None:
    if type(props) is not dict:
        raise _Bad("not_object", f"must be an object, got {_type_name(props)}", ["user_properties"])
    try:
        first = next(iter(props), "")
        if type(first) is str and first.startswith("$"):
            _check_operations(props, encoded)
        else:
            _check_object(props, 1)
            for key in props:
                if key.startswith("$"):
                    raise _Bad(
                        "mixed_operations",
                        "plain properties cannot be mixed with operations; put them under $set",
                        [key],
                    )
    except _Bad as bad:
        raise bad.push("user_properties") from None


def _check_operations(props: dict[Any, Any], encoded: bool) -> None:
    # Only a record with several operations can repeat a property across them.
    seen: dict[str, str] | None = {} if len(props) > 1 else None
    for op, body in props.items():
        if _operation_body(op, body, props) is None:
            continue
        is_add = op == "$add"
        for name, value in body.items():
            # The common case inline (a short ASCII name seen in no other operation, a scalar value):
            # a call per property was a third of what validation cost.  Anything else goes through
            # _check_operand, which checks it all again, in order, and names what is wrong.  In an
            # encoded record (``check``), lengths, encodings and integer ranges are already known.
            t = type(value)
            if (
                type(name) is str and name and (encoded or (len(name) <= MAX_STRING and name.isascii()))
                and (seen is None or name not in seen)
                and (
                    (t is int and (encoded or _INT_MIN <= value <= _INT_MAX)) or (not is_add and (
                        (t is str and (encoded or (len(value) <= MAX_STRING and value.isascii())))
                        or t is bool or value is None))
                )
            ):  # fmt: skip
                if seen is not None:
                    seen[name] = op
                continue
            _check_operand(op, name, value, seen, is_add)


def _operation_body(op: Any, body: Any, props: dict[Any, Any]) -> dict[Any, Any] | None:
    """The property map of a known operation; None for $clearAll, which has none."""
    if op not in OPERATIONS:
        if type(op) is str and op.startswith("$"):
            raise _Bad("unknown_operation", f"unknown operation; known: {', '.join(sorted(OPERATIONS))}", [op])
        raise _Bad(
            "mixed_operations", "plain properties cannot be mixed with operations; put them under $set", [str(op)]
        )
    if op == "$clearAll":
        if len(props) > 1:
            raise _Bad("clear_all_not_alone", "$clearAll cannot be combined with other operations", [op])
        return None
    if type(body) is not dict:
        raise _Bad("not_object", f"must be an object of property -> value, got {_type_name(body)}", [op])
    return body


def _check_operand(op: str, name: Any, value: Any, seen: dict[str, str] | None, is_add: bool) -> None:
    """One property of an operation: its name, its value, and that no other operation has it."""
    if type(name) is not str or not name or len(name) > MAX_STRING or not name.isascii():
        try:
            _check_key(name)
        except _Bad as bad:
            raise bad.push(op) from None
    if seen is not None:
        if name in seen:
            raise _Bad("duplicate_property", f"property also appears under {seen[name]}; one operation per property",
                       [op, name])  # fmt: skip
        seen[name] = op
    t = type(value)
    if is_add and t is not int and t is not float:
        raise _Bad("not_number", f"$add needs a number, got {_type_name(value)}", [op, name])
    # The common scalars are checked here, without a call per value.
    if t is str:
        if len(value) <= MAX_STRING and value.isascii():
            return
    elif t is int:
        if _INT_MIN <= value <= _INT_MAX:
            return
    elif t is bool or value is None:
        return
    try:
        _check_value(value, 2)
    except _Bad as bad:
        raise bad.push(name).push(op) from None


def _check_object(obj: dict[Any, Any], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _Bad("too_deep", f"nested deeper than {MAX_DEPTH} levels", [])
    for key, value in obj.items():
        # The common case (a short ASCII key, a scalar value) is checked inline: a function call per
        # value would double what validation costs a producer.
        if type(key) is not str or not key or len(key) > MAX_STRING or not key.isascii():
            _check_key(key)
        t = type(value)
        if t is str:
            if len(value) <= MAX_STRING and value.isascii():
                continue
        elif t is int:
            if _INT_MIN <= value <= _INT_MAX:
                continue
        elif t is bool or value is None:
            continue
        try:
            _check_value(value, depth)
        except _Bad as bad:
            raise bad.push(key) from None


def _check_key(key: Any) -> None:
    if type(key) is not str:
        raise _Bad("bad_key", f"property names must be strings, got {_type_name(key)}", [str(key)])
    if not key:
        raise _Bad("empty_key", "property names must not be empty", ['""'])
    _check_string(key, key)


def _check_value(value: Any, depth: int) -> None:
    t = type(value)
    if t is str:
        _check_string(value, None)
    elif t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Bad("out_of_range", "integer does not fit in 64 bits", [])
    elif t is float:
        if not math.isfinite(value):
            raise _Bad("not_finite", "NaN and Infinity are not JSON numbers", [])
    elif t is dict:
        _check_object(value, depth + 1)
    elif t is list:
        if depth + 1 > MAX_DEPTH:
            raise _Bad("too_deep", f"nested deeper than {MAX_DEPTH} levels", [])
        for i, item in enumerate(value):
            try:
                _check_value(item, depth + 1)
            except _Bad as bad:
                raise bad.push(f"[{i}]") from None
    elif not (t is bool or value is None):
        raise _Bad("not_json", f"not a JSON value ({_type_name(value)})", [])


def _check_groups(groups: Any) -> None:
    if type(groups) is not dict:
        raise _Bad("not_object", f"must be an object of group type -> name(s), got {_type_name(groups)}", ["groups"])
    if len(groups) > MAX_GROUP_TYPES:
        raise _Bad("too_many_group_types", f"{len(groups)} group types, at most {MAX_GROUP_TYPES}", ["groups"])
    total = 0
    for kind, names in groups.items():
        path = ["groups", str(kind)]
        if type(kind) is not str or not kind:
            raise _Bad("bad_key", "group types must be non-empty strings", path)
        items = names if type(names) is list else [names]
        try:
            _check_string(kind, None)
            for i, name in enumerate(items):
                if type(name) is not str:
                    where = [f"[{i}]"] if type(names) is list else []
                    raise _Bad("not_string", f"group names must be strings, got {_type_name(name)}", where)
                _check_string(name, None)
        except _Bad as bad:
            raise _Bad(bad.rule, bad.message, path + bad.parts) from None
        total += len(items)
    if total > MAX_GROUPS:
        raise _Bad("too_many_groups", f"{total} groups, at most {MAX_GROUPS} in all", ["groups"])


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"
    }.get(type(value), type(value).__name__)  # fmt: skip
