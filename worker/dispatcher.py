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

from producers.errors import StoreError
from producers.keys import Keys
from producers.redis_conn import store_errors

log = logging.getLogger("identify_queue.dispatcher")

# KEYS: wakeups, blocked, then per shard s (in order 0..n-1): lease, state
# ARGV: max shards to pop, grace ms (how long a sent task is trusted to come)
# Returns {due shards..., -1, next due ms or -1, now ms}
POP_DUE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
-- while a configuration error blocks sending, wake nobody before the next probe is due
local probe_at = tonumber(redis.call('HGET', KEYS[2], 'next_probe_ms') or '0')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))) do
  redis.call('ZREM', KEYS[1], m)
  local s = tonumber(m)
  local lease, state = KEYS[3 + 2 * s], KEYS[4 + 2 * s]
  if lease and redis.call('EXISTS', lease) == 0 then
    local st = redis.call('HMGET', state, 'retry_at', 'dispatched_at')
    local retry_at, sent = tonumber(st[1] or '0'), tonumber(st[2] or '0')
    if probe_at > now then
      redis.call('ZADD', KEYS[1], probe_at, m)
    elseif retry_at > now then
      redis.call('ZADD', KEYS[1], retry_at, m)
    elseif now - sent >= tonumber(ARGV[2]) then
      -- a task sent earlier and not yet started will drain this too: do not send another
      redis.call('HSET', state, 'dispatched_at', now)
      out[#out + 1] = s
    end
  end
end
out[#out + 1] = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] and tonumber(first[2]) or -1
out[#out + 1] = now
return out
"""

# KEYS: wakeups, then per shard: lease, queue, inflight, parked
# ARGV: the shard ids, in the same order
SWEEP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
for i = 1, #ARGV do
  local base = 2 + (i - 1) * 4
  local lease, queue, inflight, parked = KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  if redis.call('EXISTS', lease) == 0 and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local due = nil
    if redis.call('LLEN', queue) > 0 or redis.call('LLEN', inflight) > 0 then
      due = now
    else
      local first = redis.call('ZRANGE', parked, 0, 0, 'WITHSCORES')
      if first[2] then due = tonumber(first[2]) end
    end
    if due then
      redis.call('ZADD', KEYS[1], due, ARGV[i])
      added = added + 1
    end
  end
end
return added
"""

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
        self._pop_due = client.register_script(POP_DUE_LUA)
        self._sweep = client.register_script(SWEEP_LUA)
        self._pop_keys = [keys.wakeups, keys.blocked]
        for s in range(shards):
            k = keys.shard(s)
            self._pop_keys += [k.lease, k.state]
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
        """Send a drain task for every due shard; return how long until the next one is due (s)."""
        while True:
            with store_errors("pop due wake-ups"):
                reply = self._pop_due(keys=self._pop_keys, args=[500, self._grace_ms])
            marker = reply.index(-1)
            due, next_due, now = reply[:marker], int(reply[marker + 1]), int(reply[marker + 2])
            for shard in due:
                self._send(int(shard))
            if next_due < 0:
                return MAX_WAIT_S
            if next_due > now:
                return min(MAX_WAIT_S, (next_due - now) / 1000)

    def sweep(self) -> int:
        """Wake every shard that has work but no wake-up and no owner (a crashed drainer's)."""
        added = 0
        for start in range(0, self.shards, SWEEP_CHUNK):
            ids = list(range(start, min(start + SWEEP_CHUNK, self.shards)))
            keys = [self.keys.wakeups]
            for s in ids:
                k = self.keys.shard(s)
                keys += [k.lease, k.queue, k.inflight, k.parked]
            with store_errors("sweep shards"):
                added += int(self._sweep(keys=keys, args=ids))
        if added:
            log.info("dispatcher: woke %d shard(s) that had work and no drainer", added)
        return added

    def heartbeat(self) -> None:
        with store_errors("heartbeat"):
            self._redis.zadd(self.keys.workers, {self.node: int(time.time() * 1000)})

    def _wait_for_kick(self, timeout_s: float) -> None:
        with store_errors("wait for kick"):
            self._redis.blpop([self.keys.kick], timeout=max(timeout_s, 0.01))
