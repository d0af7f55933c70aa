"""What to send: pure decisions on a claim's records, before any request.

    items         one identification per record, or per run of a user's updates that merge exactly
    shortfall     which users need more of the hourly budget than this claim has reserved
    within        what the budget allows now, in order; the rest of each limited user waits
    next_batch    how many items the next request carries, and its body

The drain loop (``loop.py``) does the I/O around them: the claim, the budget's reservation, the
request, the settle.  Each is tested with tables of cases (tests/unit/test_plan.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import orjson

from producers.contract.entry import Entry
from producers.record import compact_json
from worker.drain import batcher
from worker.drain.merging import coalesce

_new = tuple.__new__


class Item(NamedTuple):
    """One identification of a request, and the queue entries it carries (several when merged)."""

    data: bytes
    entries: tuple[Entry, ...]

    @property
    def user_key(self) -> str:
        return self.entries[0].user_key


def items(decoded: Sequence[Entry], *, merge: bool, max_record_bytes: int) -> list[Item]:
    """One item per entry, or, merging, one per run of a user's updates that merge exactly.

    Merged, a user's items follow one another (in the order of the user's first entry); each
    user's updates keep their order either way.
    """
    if not merge or len({e.user_key for e in decoded}) == len(decoded):
        # merging or not, nothing to merge; tuple.__new__ is what Item(...) runs, without a
        # Python-level call per item (a third of this step's time for a claim of 1,000)
        return [_new(Item, (e.data, (e,))) for e in decoded]
    by_user: dict[str, list[Entry]] = {}
    for e in decoded:
        by_user.setdefault(e.user_key, []).append(e)
    out: list[Item] = []
    for entries in by_user.values():
        if len(entries) == 1:
            out.append(Item(entries[0].data, (entries[0],)))
            continue
        try:
            records = [orjson.loads(e.data) for e in entries]
        except orjson.JSONDecodeError:
            out += [Item(e.data, (e,)) for e in entries]  # not ours to judge here: sent as is
            continue
        start = 0
        for record, count in coalesce(records, max_record_bytes):
            covered = tuple(entries[start : start + count])
            out.append(Item(covered[0].data if count == 1 else compact_json(record), covered))
            start += count
    return out


def unmerge(item: Item) -> list[Item]:
    """A merged item's updates, each on its own again, in order."""
    return [Item(e.data, (e,)) for e in item.entries]


def raw(pending: Sequence[Item]) -> list[bytes]:
    """The queue entries the items carry, in order: what ``inflight`` holds for them."""
    return [e.raw for i in pending for e in i.entries]


def entries_of(pending: Sequence[Item]) -> list[Entry]:
    return [e for i in pending for e in i.entries]


def shortfall(pending: Sequence[Item], left: Mapping[str, int]) -> dict[str, int]:
    """Identifications each user must still reserve: it has ``left[user]`` reserved and unsent."""
    counts = Counter([item.entries[0].user_key for item in pending])  # a list: Counter counts it in C
    if not left:
        return dict(counts)  # a claim's first reservation: nothing reserved yet
    return {u: c - left.get(u, 0) for u, c in counts.items() if c > left.get(u, 0)}


def within(
    pending: Sequence[Item], left: Mapping[str, int], limited: set[str]
) -> tuple[list[Item], dict[str, list[Item]]]:
    """What goes now, and what waits for the budget, per user.

    A limited user sends its first ``left[user]`` items and waits with the rest (in order: nothing
    of it after the first that waits goes now); other users send everything.
    """
    keep: list[Item] = []
    waits: dict[str, list[Item]] = {}
    may = {u: left.get(u, 0) for u in limited}
    for item in pending:
        user = item.user_key
        if user not in limited:
            keep.append(item)
        elif may[user] > 0 and user not in waits:
            may[user] -= 1
            keep.append(item)
        else:
            waits.setdefault(user, []).append(item)
    return keep, waits


class Batch(NamedTuple):
    size: int
    body: bytes
    #: The caps on the next batches' sizes once this one is cut (split remainders first).
    splits: list[int]


def next_batch(
    pending: Sequence[Item], *, careful: bool, max_count: int, max_bytes: int, overhead: int, splits: Sequence[int],
    encode: Callable[[list[bytes]], bytes],
) -> Batch:  # fmt: skip
    """How many pending items the next request holds, and its encoded body.

    ``careful``: one record at a time (this claim's drain has died before).  ``splits``: caps left
    by splitting a refused batch (a 400 naming none, a 413), the first for this batch.  ``encode``
    turns the items' JSON into the form body.
    """
    rest = list(splits)
    if careful:
        return Batch(1, encode([pending[0].data]), rest)
    n = batcher.take([len(i.data) for i in pending], max_count, max_bytes - overhead)
    cap = rest.pop(0) if rest else None
    if cap is not None:
        n = min(n, cap)
    body = encode([i.data for i in pending[:n]])
    # Cut by the records' JSON; escaping can grow the body (non-ASCII bytes take three), so the
    # encoded size has the last word.
    while len(body) > max_bytes and n > 1:
        n = max(1, min(n - 1, n * max_bytes // len(body)))
        body = encode([i.data for i in pending[:n]])
    if cap is not None and n < cap:
        rest.insert(0, cap - n)  # the rest of that part still goes out on its own
    return Batch(n, body, rest)
