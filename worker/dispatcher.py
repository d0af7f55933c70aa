"""The dispatcher: turns due wake-ups into Celery drain tasks, without a beat process or polling.

It runs as a thread in every worker's main process (a Celery bootstep).  Producers add their shard
to the ``wakeups`` set, due after the linger time, and push a kick; the dispatcher blocks in BLPOP
on the kick list until the kick or the earliest due wake-up, pops what is due and sends one drain
task per shard.  Several workers' dispatchers can run at once: popping is atomic, so each wake-up
becomes one task.

A wake-up for a shard that is being drained, or whose drain task is sent and not yet started, is
dropped (its drainer sees the new records and, on
release, asks for a new wake-up if work remains).  One for a shard waiting to retry is put back at
the retry time.  A periodic sweep re-adds a wake-up for any shard that has records but neither a
wake-up nor a lease: that is what restarts the work of a drainer killed with ``kill -9``, once its
lease has expired.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import redis

from producers.contract.connection import store_errors
from producers.contract.errors import StoreError
from producers.contract.keys import Keys
from producers.contract.scripts import Script
from producers.contract.topology import Call, run_together

log = logging.getLogger("identify_queue.dispatcher")

#: The longest the dispatcher blocks before looking again (it is woken earlier by kicks).
MAX_WAIT_S = 1.0
SWEEP_CHUNK = 256


class Dispatcher:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        shards: int,
        send: Callable[[int], None],
        *,
        sweep_interval_s: float,
        task_grace_s: float,
        node: str | None = None,
    ) -> None:
        self._redis = client
        self.keys = keys
        self.shards = shards
        self._send = send
        self.sweep_interval_s = sweep_interval_s
        self._grace_ms = int(task_grace_s * 1000)
        self.node = node or f"{socket.gethostname()}:{threading.get_native_id()}"
        self._pop_due = Script(client, "worker", "dispatch_pop_due")  # worker/lua/dispatch_pop_due.lua
        self._mark = Script(client, "worker", "dispatch_mark")
        self._sweep = Script(client, "worker", "dispatch_sweep")
        self._wake = Script(client, "producers", "wake")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="identify-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._redis.rpush(self.keys.kick, "1")  # wake our BLPOP now rather than at its timeout
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    self.heartbeat()
                    next_sweep = time.monotonic() + self.sweep_interval_s
                wait = self.dispatch_due()
                self._wait_for_kick(min(wait, max(0.01, next_sweep - time.monotonic())))
            except StoreError as exc:
                log.warning("dispatcher: %s; trying again in 1 s", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("dispatcher: unexpected error; trying again in 1 s")
                self._stop.wait(1.0)

    def dispatch_due(self) -> float:
        """Send a drain task for every due shard; return how long until the next one is due (s).

        Due shards are popped from the global wake-ups (dispatch_pop_due.lua), then each is checked
        on its own slot (dispatch_mark.lua: not owned, not waiting to retry, no task sent that has
        not come yet); a shard that must wait is woken again at its time.
        """
        while True:
            reply = self._pop_due([self.keys.wakeups, self.keys.blocked], [500], action="pop due wake-ups")
            marker = reply.index(-1)
            due, next_due, now = [int(s) for s in reply[:marker]], int(reply[marker + 1]), int(reply[marker + 2])
            calls = [Call(self._mark, [self.keys.shard(s).lease, self.keys.shard(s).state], [self._grace_ms])
                     for s in due]  # fmt: skip
            try:
                marks = run_together(self._redis, calls, action="mark shards dispatched")
            except StoreError:
                # the marks may have been written and their answer lost: popped, marked, and no task
                # sent, the shards would wait out the grace; cleared, they are due again at once
                with contextlib.suppress(StoreError):
                    self._undispatch(due)
                raise
            later: list[int | str] = []
            for shard, mark in zip(due, marks, strict=True):
                if isinstance(mark, Exception):
                    later += [shard, now]  # looked at again at once
                    continue
                send, at = int(mark[0]), int(mark[1])
                if at:
                    later += [shard, at]
                if send:
                    self._send_or_wake_again(shard)
            if later:
                self._wake([self.keys.meta, self.keys.wakeups, self.keys.kick], ["LT", *later], action="wake again")
            if next_due < 0:
                return MAX_WAIT_S
            if next_due > now:
                return min(MAX_WAIT_S, (next_due - now) / 1000)

    def _send_or_wake_again(self, shard: int) -> None:
        try:
            self._send(shard)
        except Exception as exc:
            # The broker is down: the shard was popped but got no task.  Wake it again now, not
            # after the grace a sent task gets, so the drain resumes with the broker.
            self._undispatch([shard])
            raise StoreError(f"send drain tasks: the broker refused ({type(exc).__name__}: {exc})") from exc

    def _undispatch(self, shards: list[int]) -> None:
        with store_errors("wake shards again"):
            pipe = self._redis.pipeline(transaction=False)
            for shard in shards:
                pipe.hdel(self.keys.shard(shard).state, "dispatched_at")
                pipe.zadd(self.keys.wakeups, {str(shard): 0})
            pipe.execute()

    def sweep(self) -> int:
        """Wake every shard that has work but no wake-up and no owner (a crashed drainer's)."""
        added = 0
        for start in range(0, self.shards, SWEEP_CHUNK):
            ids = list(range(start, min(start + SWEEP_CHUNK, self.shards)))
            calls = []
            for s in ids:
                k = self.keys.shard(s)
                calls.append(Call(self._sweep, [k.lease, k.queue, k.inflight, k.parked], []))
            pairs: list[int | str] = []
            for shard, due in zip(ids, run_together(self._redis, calls, action="sweep shards"), strict=True):
                if isinstance(due, Exception):
                    raise due
                if int(due) >= 0:
                    pairs += [shard, int(due)]
            if pairs:
                added += int(self._wake([self.keys.meta, self.keys.wakeups, self.keys.kick], ["NX", *pairs],
                                        action="sweep shards"))  # fmt: skip
        if added:
            log.info("dispatcher: woke %d shard(s) that had work and no drainer", added)
        return added

    def heartbeat(self) -> None:
        with store_errors("heartbeat"):
            sec, usec = self._redis.time()  # Redis's clock: `status` compares with it
            self._redis.zadd(self.keys.workers, {self.node: int(sec) * 1000 + int(usec) // 1000})

    def _wait_for_kick(self, timeout_s: float) -> None:
        with store_errors("wait for kick"):
            self._redis.blpop([self.keys.kick], timeout=max(timeout_s, 0.01))
