"""Merging one user's consecutive updates into the fewest identifications with the same effect.

Event-driven producers update hot users many times a minute (last_seen, counters); sent one by
one, those updates burn Amplitude's 1,800-per-user-per-hour budget.  ``merge(a, b)`` returns one
identification whose effect, under Amplitude's semantics (``worker/drain/amplitude_model.py``), is
exactly that of ``a`` then ``b``, or None when no single identification can say that.  It is
proved against the model by property tests (tests/unit/test_merging.py).

Per property, ``a``'s operation then ``b``'s becomes one operation when the composition is exact:

    x then $set v            -> $set v             x then $unset          -> $unset
    $set v then $setOnce w   -> $set v             $unset then $setOnce w -> $set w
    $setOnce v then $setOnce w -> $setOnce v
    $add m then $add n       -> $add m+n           (integers only: float addition is not associative;
                                                    exact when the property holds an integer, as
                                                    counters do; one set or increased by a fraction
                                                    earlier among the user's updates is not summed
                                                    into again; a fraction stored before them may
                                                    differ in its last binary digit)
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

from producers.contract.errors import InvalidRecord
from producers.record import validate
from worker.drain.amplitude_model import FIELD_GROUPS, SINGLE_FIELDS, operations

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


_GROUP_OF = {f: group for group in FIELD_GROUPS for f in group}
_SINGLE = frozenset(SINGLE_FIELDS)


class _Fold:
    """A run of one user's updates, merged: kept as operations and fields until it is built.

    Folding costs one pass over each update; building and validating happen once per run.
    """

    def __init__(self, record: dict[str, Any], fractional: frozenset[str] = frozenset()) -> None:
        #: Properties an earlier run may have left holding a fraction: summing integer increments
        #: onto those is not exact (float addition is not associative), so they are not merged.
        self.fractional = fractional
        self.user_id, self.device_id = record.get("user_id"), record.get("device_id")
        self.ops = _property_ops(record)
        self.fields: dict[str, Any] = {}
        self.groups: dict[str, Any] = dict(record.get("groups") or {})
        self._take_fields(record)

    def absorb(self, record: dict[str, Any]) -> bool:
        """Fold ``record`` in if the result is exact; otherwise leave this run as it is."""
        if self.ops is None or record.get("user_id") != self.user_id or record.get("device_id") != self.device_id:
            return False
        later = _property_ops(record)
        if later is None:
            return False
        combined: dict[str, Op] = {}
        for name, op in later.items():
            if name in self.fractional and name in self.ops and op[0] == "$add":
                return False
            result = compose(self.ops[name], op) if name in self.ops else op
            if result is None:
                return False
            combined[name] = result
        self.ops.update(combined)
        self._take_fields(record)
        self.groups.update(record.get("groups") or {})
        return True

    def _take_fields(self, record: dict[str, Any]) -> None:
        for name, value in record.items():
            if value is None:
                continue
            group = _GROUP_OF.get(name)
            if group is not None:
                # naming one field of a group resets the rest of it: the group comes from here
                for f in group:
                    if record.get(f) is None:
                        self.fields.pop(f, None)
                    else:
                        self.fields[f] = record[f]
            elif name in _SINGLE:
                self.fields[name] = value

    def build(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.device_id is not None:
            out["device_id"] = self.device_id
        if self.ops:
            body: dict[str, dict[str, Any]] = {}
            for name, (op, value) in self.ops.items():
                body.setdefault(op, {})[name] = value
            out["user_properties"] = body
        out.update(self.fields)
        if self.groups:
            out["groups"] = self.groups
        return out


def _valid(record: dict[str, Any], max_record_bytes: int) -> bool:
    try:
        validate(record, min_id_length=1, max_record_bytes=max_record_bytes)
    except InvalidRecord:
        return False
    return True


def merge(a: dict[str, Any], b: dict[str, Any], max_record_bytes: int = 64 * 1024) -> dict[str, Any] | None:
    """One identification with the effect of ``a`` then ``b`` for their user, or None."""
    fold = _Fold(a)
    if not fold.absorb(b):
        return None
    merged = fold.build()
    # A merge that breaks one of Amplitude's rules (more groups than it takes, too large) is declined.
    return merged if _valid(merged, max_record_bytes) else None


def coalesce(
    records: list[dict[str, Any]], max_record_bytes: int = 64 * 1024, fractional: frozenset[str] = frozenset()
) -> list[tuple[dict[str, Any], int]]:
    """Fold one user's updates, in order: each result is (identification, how many updates it covers).

    Greedy: each update joins the run before it when that is exact, else starts a new run.  A
    property that an update sets or increments to a fraction is not summed into afterwards, in
    that run or a later one (``fractional`` carries what came before ``records``).
    """
    out: list[tuple[dict[str, Any], int]] = []
    fold: _Fold | None = None
    run: list[dict[str, Any]] = []
    for record in records:
        if fold is not None and fold.absorb(record):
            run.append(record)
        else:
            if fold is not None:
                out += _finish(fold, run, max_record_bytes)
            fold, run = _Fold(record, fractional), [record]
        fractional |= _fractions(record)
        fold.fractional = fractional
    if fold is not None:
        out += _finish(fold, run, max_record_bytes)
    return out


def _fractions(record: dict[str, Any]) -> frozenset[str]:
    """The properties ``record`` may leave holding a fraction."""
    ops = operations(record.get("user_properties") or {})
    return frozenset(name for op in ("$add", "$set", "$setOnce") for name, v in ops.get(op, {}).items()
                     if type(v) is float)  # fmt: skip


def _finish(fold: _Fold, run: list[dict[str, Any]], max_record_bytes: int) -> list[tuple[dict[str, Any], int]]:
    if len(run) == 1:
        return [(run[0], 1)]
    merged = fold.build()
    if _valid(merged, max_record_bytes):
        return [(merged, len(run))]
    # Too large or too many groups once merged: any contiguous part of a run merges exactly too.
    half = len(run) // 2
    first = coalesce(run[:half], max_record_bytes, fold.fractional)
    return first + coalesce(run[half:], max_record_bytes, fold.fractional)
