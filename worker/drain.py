"""Draining one shard: claim records, cut batches, POST them, and settle each answer.

One drain task owns one shard at a time (its lease), so one user's records go out in the order
they were enqueued: a batch is sent only after the previous one of the shard was settled, and a
batch that must be retried holds back everything behind it in that shard (other shards go on).

The loop runs for at most ``drain_slice_s`` and then gives the worker process back to other
shards; the release tells the dispatcher when this shard needs its next drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from producers import entry
from producers.entry import Entry
from producers.errors import InvalidRecord, LeaseLost, SinkError
from worker import batcher
from worker.backoff import retry_delay_s
from worker.outcome import Outcome, Verdict, classify, classify_error
from worker.settings import Settings
from worker.shard_store import Claim, Settlement, ShardStore
from worker.sink import HttpSink, batch_json

log = logging.getLogger("identify_queue.drain")

# Backoff of a failing shard: 1 s doubling up to 5 minutes.
RETRY_BASE_S = 1.0
RETRY_CAP_S = 300.0


class Item(NamedTuple):
    """One identification of a request, and the queue entries it carries."""

    data: bytes
    entries: tuple[Entry, ...]


class Drainer:
    def __init__(
        self, settings: Settings, store: ShardStore, sink: HttpSink, should_stop: Callable[[], bool] = lambda: False
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self._should_stop = should_stop
        # The body overhead besides the records: `api_key=...&identification=`.
        self._overhead = len(sink.body(b""))

    def drain(self, shard: int) -> None:
        token = self.store.acquire(shard)
        if token is None:
            return  # another drainer owns it and will see everything queued there
        retry_in_ms = 0
        try:
            deadline = time.monotonic() + self.settings.drain_slice_s
            while time.monotonic() < deadline and not self._should_stop():
                claim = self.store.claim(shard, token, self.settings.batch_size)
                if not claim.entries:
                    break
                retry_in_ms = self._process(shard, token, claim)
                if retry_in_ms:
                    break
        except LeaseLost:
            log.warning("shard %d: lease lost while draining; another drainer took over", shard)
            return
        self.store.release(shard, token, retry_in_ms=retry_in_ms)

    def _process(self, shard: int, token: str, claim: Claim) -> int:
        """Send everything claimed, in order; return a delay (ms) if the shard must wait to retry."""
        pending = [Item(e.data, (e,)) for e in self._decode(claim.entries)]
        while pending and not self._should_stop():
            n = self._next_batch(pending)
            batch, rest = pending[:n], pending[n:]
            outcome = self._send(shard, token, batch)
            if outcome.verdict is Verdict.ACCEPTED:
                delivered = sum(len(i.entries) for i in batch)
                self.store.settle(
                    shard, token, Settlement(delivered=delivered, requests=1, keep=_raw(rest), kept_on_purpose=True)
                )
                pending = rest
                continue
            return self._retry_later(shard, token, batch, rest, outcome)
        return 0

    def _decode(self, raws: list[bytes]) -> list[Entry]:
        out = []
        for raw in raws:
            try:
                out.append(entry.decode(raw))
            except InvalidRecord:
                log.error("undecodable queue entry skipped: %r", raw[:80])
        return out

    def _next_batch(self, pending: list[Item]) -> int:
        budget = self.settings.batch_max_bytes - self._overhead
        return batcher.take([len(i.data) for i in pending], self.settings.batch_size, budget)

    def _send(self, shard: int, token: str, batch: list[Item]) -> Outcome:
        body = self.sink.body(batch_json([i.data for i in batch]))
        self.store.renew(shard, token)
        try:
            result = self.sink.post(body)
        except SinkError as exc:
            return classify_error(exc)
        return classify(result.status, result.headers, result.body, len(batch))

    def _retry_later(self, shard: int, token: str, batch: list[Item], rest: list[Item], outcome: Outcome) -> int:
        attempts = max(e.attempts for i in batch for e in i.entries) + 1
        delay = outcome.retry_after_s or retry_delay_s(attempts, RETRY_BASE_S, RETRY_CAP_S)
        retried = [entry.with_attempts(e, e.attempts + 1).raw for i in batch for e in i.entries]
        self.store.settle(shard, token, Settlement(requests=1, keep=retried + _raw(rest), kept_on_purpose=True))
        log.warning(
            "shard %d: %s; %d records wait %.1f s (attempt %d)",
            shard, outcome.detail or outcome.verdict, len(retried) + len(rest), delay, attempts,
        )  # fmt: skip
        return max(1, int(delay * 1000))


def _raw(items: list[Item]) -> list[bytes]:
    return [e.raw for i in items for e in i.entries]
