"""Sending blocked for every worker: a configuration error (an invalid API key, a wrong URL) is not
the records' fault, so nothing is dead-lettered; every worker stops sending, one request probes
with backoff, and the first answer that is not a configuration error lets everyone go on.

    block      worker/lua/block.lua      record why, count probes, say when the next one is due
    unblock    worker/lua/unblock.lua    lift the block, wake every waiting shard at once
    probe_now  worker/lua/probe_now.lua  a worker that starts may bring the fix: probe at once
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from producers.contract.keys import Keys
from producers.contract.scripts import Script


@dataclass
class Block:
    newly_blocked: bool
    probes: int
    next_probe_in_ms: int


class Blocking:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._block = Script(client, "worker", "block")
        self._unblock = Script(client, "worker", "unblock")
        self._probe_now = Script(client, "worker", "probe_now")

    def block(
        self, reason: str, detail: str, status: int | None, *, base_s: float, cap_s: float, jitter: float
    ) -> Block:
        """Stop every worker from sending; returns when to probe again."""
        args = [reason, detail, status or "", int(base_s * 1000), int(cap_s * 1000), jitter]
        new, probes, delay = self._block([self.keys.blocked], args, action="block sending")
        return Block(bool(new), int(probes), int(delay))

    def unblock(self) -> int:
        """Let every worker send again; how long sending was blocked (ms), or -1 if it was not."""
        keys = [self.keys.blocked, self.keys.wakeups, self.keys.kick]
        return int(self._unblock(keys, action="unblock sending"))

    def probe_now(self) -> bool:
        """If sending is blocked, probe at once (a worker starting may bring the fix)."""
        keys = [self.keys.blocked, self.keys.wakeups, self.keys.kick]
        return bool(self._probe_now(keys, action="probe now"))
