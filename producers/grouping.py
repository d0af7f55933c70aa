"""Group commit: concurrent ``identify()`` calls share one enqueue.

A Redis round trip and the script call around a record cost far more than appending the record,
so calls that arrive while an enqueue is under way wait for it to end, then go together in the
next one.  A call alone goes at once (it waits for no timer), and no call returns before Redis
holds its record: each waits for the outcome of the enqueue that carried it.

``GroupCommit`` is for threads: the first caller leads (runs the enqueue for everything pending,
its own record included), and when that ends it hands the lead to the oldest waiting call, so no
thread works for others longer than one enqueue.  ``AsyncGroupCommit`` is the same for asyncio:
one task runs the enqueues while callers are waiting.

Each flush returns one outcome per item (None: held by Redis; an exception: raised by that item's
call alone), so a failure reaches exactly the calls it concerns (``IdentifyProducer.group_outcomes``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Records in one grouped enqueue at most: beyond it a group's script call holds Redis longer
#: than it saves (identify_many's chunks are as large).
GROUP_MAX_RECORDS = 512

Outcomes = list[BaseException | None]


#: How long a thread's group waits at most for the calls of the group before it to come back.
GATHER_S = 0.001


def take(pending: int, max_items: int) -> int:
    """How many of the pending items the next group carries: all of them, up to the bound."""
    return min(pending, max_items)


def gather_target(last_group: int, pending: int, max_items: int) -> int:
    """How many calls a thread's group waits for (up to GATHER_S) before it goes.

    The callers of the last group were released together and each comes back with its next call
    within microseconds, but a thread needs the GIL for that: without waiting, the first one back
    would go alone and the rest pile up behind it, groups of 1 and n-1 by turns.  So a group waits
    for as many calls as the last one carried; after a group of one (a call alone) it waits for
    nothing, so a lone caller never waits.
    """
    if last_group <= 1:
        return 0
    return min(last_group, max_items) if pending < last_group else 0


class _Slot(Generic[T]):
    """A waiting call.  Its lock is taken at birth and released when the call may go on (its
    outcome is set, or it leads): a bare lock costs a tenth of a threading.Event."""

    __slots__ = ("done", "error", "item", "lead")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Lock()
        self.done.acquire()
        self.error: BaseException | None = None
        self.lead = False


class GroupCommit(Generic[T]):
    """Run ``flush`` over the items submitted by concurrent threads, a group at a time."""

    def __init__(self, flush: Callable[[list[T]], Outcomes], max_items: int = GROUP_MAX_RECORDS) -> None:
        self._flush = flush
        self._max = max_items
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list[_Slot[T]] = []
        self._leading = 0  # 1 while a group is under way
        self._last = 0  # size of the last group
        self._want = 0  # a leader waits until this many calls are pending
        #: Groups flushed so far (tests and the benchmark read how much grouping happened).
        self.groups = 0

    def submit(self, item: T) -> None:
        """Return once the group that carried ``item`` is written; raise what concerns it."""
        slot = _Slot(item)
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = 1
            if self._want and len(self._pending) >= self._want:
                self._arrived.notify()
        if not lead:
            slot.done.acquire()
        if lead or slot.lead:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error

    def _lead(self, leader: _Slot[T]) -> None:
        with self._lock:
            self._want = gather_target(self._last, len(self._pending), self._max)
            if self._want:
                deadline = time.monotonic() + GATHER_S
                while len(self._pending) < self._want and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
                self._want = 0
            count = take(len(self._pending), self._max)
            group, self._pending = self._pending[:count], self._pending[count:]
            self._last = count
            self.groups += 1
        try:
            outcomes = self._flush([slot.item for slot in group])
        except BaseException as exc:
            # whatever stopped the flush (Ctrl-C included) is every call's answer: none may wait forever
            outcomes = [exc] * len(group)
        for slot, error in zip(group, outcomes, strict=True):
            slot.error = error
            if slot is not leader:
                slot.done.release()
        with self._lock:
            if self._pending:
                self._pending[0].lead = True
                self._pending[0].done.release()
            else:
                self._leading = 0


class AsyncGroupCommit(Generic[T]):
    """``GroupCommit`` for coroutines of one event loop: a task flushes while calls wait."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[Outcomes]], max_items: int = GROUP_MAX_RECORDS) -> None:
        self._flush = flush
        self._max = max_items
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.groups = 0

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        # a cancelled caller leaves its record in the group: it may still be written, as a
        # blocking call interrupted after sending would
        await future

    async def _run(self) -> None:
        try:
            while self._pending:
                count = take(len(self._pending), self._max)
                group, self._pending = self._pending[:count], self._pending[count:]
                self.groups += 1
                try:
                    outcomes = await self._flush([item for item, _ in group])
                except Exception as exc:
                    outcomes = [exc] * len(group)
                except BaseException:
                    for _, future in group:
                        future.cancel()  # the loop is going away: the callers are cancelled with it
                    raise
                _settle(group, outcomes)
        finally:
            self._task = None

    async def wait_idle(self) -> None:
        """Until every submitted item has its outcome (closing a producer waits for this)."""
        while self._task is not None:
            await asyncio.shield(self._task)


def _settle(group: list[tuple[T, asyncio.Future[None]]], outcomes: Outcomes) -> None:
    for (_, future), error in zip(group, outcomes, strict=True):
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
