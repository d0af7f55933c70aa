"""A reference model of what an identification does to a user in Amplitude: a pure function.

It is the yardstick merging is proved against (tests/unit/test_merging.py), and the local
server uses it to show what a run delivered.  The semantics, per property:

    $set v        the value becomes v                plain properties mean $set
    $setOnce v    becomes v only if it has no value  $unset        the value is removed
    $add n        numeric add (no value counts as 0) $clearAll     every property is removed
    $append v     add v (or each item of a list v) at the end of the list (a scalar becomes [scalar])
    $prepend v    the same, at the front             $remove v     drop every occurrence of v's items
    $preInsert v  prepend the items not yet present  $postInsert v append the items not yet present

Device fields: platform, os_name, os_version, device_brand, device_manufacturer, device_model and
carrier are set together, as are country, region, city and dma: when an identification names any
field of such a group, the fields of that group it leaves out are reset.  The other top-level
fields are each set when given.  ``groups`` sets the user's group(s) of each type it names.
"""

from __future__ import annotations

from typing import Any

DEVICE_GROUP = ("platform", "os_name", "os_version", "device_brand", "device_manufacturer", "device_model", "carrier")
LOCATION_GROUP = ("country", "region", "city", "dma")
FIELD_GROUPS = (DEVICE_GROUP, LOCATION_GROUP)
SINGLE_FIELDS = ("app_version", "language", "paying", "start_version")


def apply(state: dict[str, Any], identification: dict[str, Any]) -> dict[str, Any]:
    """The user's state after ``identification``; ``state`` is not modified."""
    props = dict(state.get("user_properties", {}))
    fields = dict(state.get("fields", {}))
    groups = dict(state.get("groups", {}))
    for op, body in operations(identification.get("user_properties") or {}).items():
        if op == "$clearAll":
            props.clear()
            continue
        for name, value in body.items():
            _apply_op(props, op, name, value)
    for group in FIELD_GROUPS:
        if any(identification.get(f) is not None for f in group):
            for f in group:
                value = identification.get(f)
                if value is None:
                    fields.pop(f, None)
                else:
                    fields[f] = value
    for f in SINGLE_FIELDS:
        if identification.get(f) is not None:
            fields[f] = identification[f]
    groups.update(identification.get("groups") or {})
    return {"user_properties": props, "fields": fields, "groups": groups}


def operations(user_properties: dict[str, Any]) -> dict[str, Any]:
    """``user_properties`` as operations: plain properties are a ``$set``."""
    if user_properties and not next(iter(user_properties)).startswith("$"):
        return {"$set": user_properties}
    return user_properties


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _apply_op(props: dict[str, Any], op: str, name: str, value: Any) -> None:
    current = props.get(name)
    if op == "$set":
        props[name] = value
    elif op == "$setOnce":
        if name not in props:
            props[name] = value
    elif op == "$unset":
        props.pop(name, None)
    elif op == "$add":
        base = current if isinstance(current, int | float) and not isinstance(current, bool) else 0
        props[name] = base + value
    elif op == "$append":
        props[name] = _as_list(current) + _items(value)
    elif op == "$prepend":
        props[name] = _items(value) + _as_list(current)
    elif op == "$postInsert":
        existing = _as_list(current)
        props[name] = existing + [v for v in _items(value) if v not in existing]
    elif op == "$preInsert":
        existing = _as_list(current)
        props[name] = [v for v in _items(value) if v not in existing] + existing
    elif op == "$remove":
        drop = _items(value)
        props[name] = [v for v in _as_list(current) if v not in drop]
