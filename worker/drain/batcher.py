"""How to cut records into requests: pure functions of their sizes.

A batch is the JSON array ``[r1,r2,...]``; its size is the records' sizes, one comma between each,
and the two brackets.  ``take`` answers how many leading records form the next request, so the
drain cuts lazily: after a 413 the byte limit drops and the rest is cut again with it.
"""

from __future__ import annotations

from collections.abc import Sequence


def array_size(sizes: Sequence[int]) -> int:
    return sum(sizes) + max(len(sizes) - 1, 0) + 2


def take(sizes: Sequence[int], max_count: int, max_bytes: int) -> int:
    """How many leading records the next batch holds.

    At most ``max_count``; as many as fit in ``max_bytes``; never zero while records remain, so a
    record too large on its own still goes out alone (and its answer decides its fate).
    """
    head = sizes[:max_count]
    if array_size(head) <= max_bytes:
        return len(head)
    total = 2
    for n, size in enumerate(head):
        added = size + (1 if n else 0)
        if total + added > max_bytes:
            return max(n, 1)
        total += added
    return len(head)
