"""Merging one user's consecutive updates into the fewest identifications with the same effect.

Event-driven producers update hot users many times a minute (last_seen, counters); sent one by
one, those updates burn Amplitude's 1,800-per-user-per-hour budget.  ``merge(a, b)`` returns one
identification whose effect, under Amplitude's semantics (``worker/amplitude_model.py``), is
exactly that of ``a`` then ``b``, or None when no single identification can say that.  It is
proved against the model by property tests (tests/test_coalesce_properties.py).

Per property, ``a``'s operation then ``b``'s becomes one operation when the composition is exact:

    x then $set v            -> $set v             x then $unset          -> $unset
    $set v then $setOnce w   -> $set v             $unset then $setOnce w -> $set w
    $setOnce v then $setOnce w -> $setOnce v
    $add m then $add n       -> $add m+n           (integers only: float addition is not associative;
                                                    exact when the property holds an integer, as
                                                    counters do; a stored fraction may differ in
                                                    its last binary digit)
    $set v then $add n       -> $set v+n           (integers)      $unset then $add n -> $set n
    $append A then $append B -> $append A+B        $prepend A then $prepend B -> $prepend B+A
    $set list then $append B -> $set list+B        $set list then $prepend B  -> $set B+list
    $unset then $append B    -> $set B             $unset then $prepend B     -> $set B

Anything else ($preInsert, $postInsert, $remove, $clearAll, a $setOnce after an $add ...) keeps the
two updates apart, in order.  So do different device ids (an identify links a device to its user),
and a merge that would break one of Amplitude's rules (size, groups).  Top-level fields follow
Amplitude's groups: if ``b`` names any of platform/os/device/carrier (or country/region/city/dma),
that whole group comes from ``b``; other fields are ``b``'s where given, else ``a``'s.
"""

from __future__ import annotations

from typing import Any

from producers.errors import InvalidRecord
from producers.record import validate
from worker.amplitude_model import FIELD_GROUPS, SINGLE_FIELDS, operations

Op = tuple[str, Any]  # (operation, value) applied to one property

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _is_int(value: Any) -> bool:
    return type(value) is int


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def compose(first: Op, then: Op) -> Op | None:
    """One operation with the effect of ``first`` then ``then`` on a property, or None."""
    op2, v2 = then
    if op2 in ("$set", "$unset"):
        return then
    if op2 == "$setOnce":
        return _then_set_once(first, v2)
    if op2 == "$add":
        return _then_add(first, v2)
    if op2 in ("$append", "$prepend"):
        return _then_list(first, op2, v2)
    return None


def _then_set_once(first: Op, value: Any) -> Op | None:
    op1 = first[0]
    if op1 in ("$set", "$setOnce"):
        return first  # the property has a value: $setOnce does nothing
    if op1 == "$unset":
        return ("$set", value)  # it has none: $setOnce sets it, whatever it held before
    return None


def _then_add(first: Op, n: Any) -> Op | None:
    op1, v1 = first
    if op1 == "$add" and _is_int(v1) and _is_int(n) and _INT_MIN <= v1 + n <= _INT_MAX:
        return ("$add", v1 + n)
    if op1 == "$set" and _is_int(v1) and _is_int(n) and _INT_MIN <= v1 + n <= _INT_MAX:
        return ("$set", v1 + n)
    if op1 == "$unset" and type(n) in (int, float):
        return ("$set", n)  # no value counts as 0
    return None


def _then_list(first: Op, op2: str, value: Any) -> Op | None:
    op1, v1 = first
    if op1 == op2:
        return (op2, _items(v1) + _items(value) if op2 == "$append" else _items(value) + _items(v1))
    if op1 == "$set" and isinstance(v1, list):
        return ("$set", v1 + _items(value) if op2 == "$append" else _items(value) + v1)
    if op1 == "$unset":
        return ("$set", _items(value))
    return None


def _property_ops(record: dict[str, Any]) -> dict[str, Op] | None:
    """property -> its one operation; None for $clearAll, which touches every property."""
    ops = operations(record.get("user_properties") or {})
    if "$clearAll" in ops:
        return None
    return {name: (op, value) for op, body in ops.items() for name, value in body.items()}


def merge(a: dict[str, Any], b: dict[str, Any], max_record_bytes: int = 64 * 1024) -> dict[str, Any] | None:
    """One identification with the effect of ``a`` then ``b`` for their user, or None."""
    if a.get("user_id") != b.get("user_id") or a.get("device_id") != b.get("device_id"):
        return None
    props_a, props_b = _property_ops(a), _property_ops(b)
    if props_a is None or props_b is None:
        return None
    merged_ops = dict(props_a)
    for name, later in props_b.items():
        combined = compose(merged_ops[name], later) if name in merged_ops else later
        if combined is None:
            return None
        merged_ops[name] = combined
    out: dict[str, Any] = {k: a[k] for k in ("user_id", "device_id") if a.get(k) is not None}
    if merged_ops:
        body: dict[str, dict[str, Any]] = {}
        for name, (op, value) in merged_ops.items():
            body.setdefault(op, {})[name] = value
        out["user_properties"] = body
    _merge_fields(a, b, out)
    groups = {**(a.get("groups") or {}), **(b.get("groups") or {})}
    if groups:
        out["groups"] = groups
    try:
        validate(out, min_id_length=1, max_record_bytes=max_record_bytes)
    except InvalidRecord:
        return None  # e.g. more groups than Amplitude takes, or too large: keep them apart
    return out


def _merge_fields(a: dict[str, Any], b: dict[str, Any], out: dict[str, Any]) -> None:
    for group in FIELD_GROUPS:
        source = b if any(b.get(f) is not None for f in group) else a
        for f in group:
            if source.get(f) is not None:
                out[f] = source[f]
    for f in SINGLE_FIELDS:
        value = b.get(f) if b.get(f) is not None else a.get(f)
        if value is not None:
            out[f] = value


def coalesce(records: list[dict[str, Any]], max_record_bytes: int = 64 * 1024) -> list[tuple[dict[str, Any], int]]:
    """Fold one user's updates, in order: each result is (identification, how many updates it covers).

    Greedy: each update is merged into the one before when that is exact, else starts a new one.
    """
    out: list[tuple[dict[str, Any], int]] = []
    for record in records:
        if out:
            merged = merge(out[-1][0], record, max_record_bytes)
            if merged is not None:
                out[-1] = (merged, out[-1][1] + 1)
                continue
        out.append((record, 1))
    return out
