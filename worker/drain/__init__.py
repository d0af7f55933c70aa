"""Delivering a shard's records to /identify: the drain and every concept it rests on.

loop.py          the Drainer: claim, send, settle, release (all I/O is here and in the store)
store.py         the shard's Redis operations, each one Lua script fenced by the lease
waiting.py       users whose updates wait (429 holds, budget deferrals, replays), in order
merging.py       one user's consecutive updates merged when exact (amplitude_model.py: the semantics)
budget.py        Amplitude's 1,800 updates per user per hour
limiter.py       the global rate limit (GCRA)
batcher.py       how records are cut into requests
sink.py          the HTTP POST, form-encoded
outcome.py       what an answer means
backoff.py       how long a failing shard waits
"""
