"""Every Redis key identify-queue uses, built here and nowhere else.

All keys start with the namespace (``IDENTIFY_NAMESPACE``, default ``identify``).  A shard's keys
carry the shard in a hash tag, ``identify:{s7}:queue``, so that they share a Redis Cluster slot.

Global keys
    meta           HASH   layout of the queue (shard count, entry format), checked by every enqueue and
                          replay; the workers' linger and any request size learned from a 413
    total          STRING records accepted and not yet delivered or dead-lettered (the cap's basis)
    wakeups        ZSET   shard -> time (ms) its drain is due; producers add, the dispatcher pops
    kick           LIST   at most one element: wakes a dispatcher blocked in BLPOP
    stats          HASH   counters for `status` (delivered, requests, replayed, last error ...)
    rate:<bucket>  STRING records delivered in that ten-second bucket (for the delivery rate)
    blocked        HASH   set while a configuration error (such as a bad API key) stops sending
    dlq:entries    HASH   dead-letter id -> entry (JSON)
    dlq:index      ZSET   dead-letter id -> failed-at time (ms), for listing in order
    dlq:counts     HASH   reason -> number of dead-letter entries
    ratelimit:*    STRING GCRA state of the global request and record limits
    workers        ZSET   worker node name -> last heartbeat (ms)
    import:<job>   HASH   an import job's progress: line, offset, counts, state, input, owning run
                          (written by the enqueue script with each chunk; expires 30 days after)
    fp:<user key>  STRING 12-byte fingerprint of the last record an import enqueued for the user
                          (--skip-unchanged; TTL --fingerprint-ttl; the worker deletes it on dead-letter)
    kombu:*        Celery's own keys (its broker queue of drain tasks), under kombu's global prefix

Per shard ``{sN}``
    queue          LIST   entries to send, oldest first
    seq            STRING the last sequence number given to an entry of the shard (worker/drain/waiting.py)
    inflight       LIST   entries a drainer claimed and has not settled; read again first on a crash
    lease          STRING token of the drainer that owns the shard, with a TTL
    state          HASH   retry time, recovery count, `kept` mark of a clean release, dispatch time,
                          the token of the last claim (to tell a lost lease from a crash)
    parked         ZSET   user -> release time (ms) of a user whose updates wait (429 hold, budget, replay)
    parked_why     HASH   user -> why it waits: held (429), deferred (hourly budget), replayed
    waiting        ZSET   every waiting update of the shard, all at score 0, ordered by member:
                          ``<user key length>:<user key>|<seq, 15 digits>|<entry>`` (worker/drain/waiting.py)
    dlq_seq        STRING the last number given to a dead letter of the shard (its id is ``<shard>-<n>``)
    minutes        HASH   records delivered and enqueued per minute, a ring of the last 64 (the console's chart)
    budget:<slot>  HASH   user -> identifications sent in that ten-minute slot
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShardKeys:
    shard: int
    queue: str
    inflight: str
    lease: str
    state: str
    seq: str
    parked: str
    parked_why: str
    waiting: str
    dlq_seq: str
    minutes: str
    _prefix: str

    def budget(self, slot: int) -> str:
        return f"{self._prefix}:budget:{slot}"


@dataclass(frozen=True)
class Keys:
    namespace: str
    meta: str = field(init=False)
    total: str = field(init=False)
    wakeups: str = field(init=False)
    kick: str = field(init=False)
    stats: str = field(init=False)
    blocked: str = field(init=False)
    dlq_entries: str = field(init=False)
    dlq_index: str = field(init=False)
    dlq_counts: str = field(init=False)
    ratelimit_requests: str = field(init=False)
    ratelimit_records: str = field(init=False)
    workers: str = field(init=False)
    import_progress_prefix: str = field(init=False)
    fingerprints_prefix: str = field(init=False)
    #: Celery's queue for drain tasks, and the prefix kombu puts before every key it writes.
    celery_queue: str = field(init=False)
    kombu_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        ns = self.namespace
        for name, value in {
            "meta": f"{ns}:meta",
            "total": f"{ns}:total",
            "wakeups": f"{ns}:wakeups",
            "kick": f"{ns}:kick",
            "stats": f"{ns}:stats",
            "blocked": f"{ns}:blocked",
            "dlq_entries": f"{ns}:dlq:entries",
            "dlq_index": f"{ns}:dlq:index",
            "dlq_counts": f"{ns}:dlq:counts",
            "ratelimit_requests": f"{ns}:ratelimit:requests",
            "ratelimit_records": f"{ns}:ratelimit:records",
            "workers": f"{ns}:workers",
            "import_progress_prefix": f"{ns}:import:",
            "fingerprints_prefix": f"{ns}:fp:",
            "celery_queue": "drain",
            "kombu_prefix": f"{ns}:kombu:",
        }.items():
            object.__setattr__(self, name, value)

    def shard(self, shard: int) -> ShardKeys:
        prefix = f"{self.namespace}:{{s{shard}}}"
        return ShardKeys(
            shard=shard,
            queue=f"{prefix}:queue",
            inflight=f"{prefix}:inflight",
            lease=f"{prefix}:lease",
            state=f"{prefix}:state",
            seq=f"{prefix}:seq",
            parked=f"{prefix}:parked",
            parked_why=f"{prefix}:parked_why",
            waiting=f"{prefix}:waiting",
            dlq_seq=f"{prefix}:dlq_seq",
            minutes=f"{prefix}:minutes",
            _prefix=prefix,
        )

    def delivered_in(self, bucket: int) -> str:
        """Records delivered in the ten-second bucket ``bucket`` (seconds since the epoch // 10)."""
        return f"{self.namespace}:rate:{bucket}"

    def import_progress(self, job: str) -> str:
        return f"{self.import_progress_prefix}{job}"

    def fingerprint(self, user_key: str) -> str:
        return f"{self.fingerprints_prefix}{user_key}"

    def pattern(self) -> str:
        """A glob covering every key of this namespace, Celery's included."""
        return f"{self.namespace}:*"
