"""Every Redis key identify-queue uses, built here and nowhere else.

All keys start with the namespace (``IDENTIFY_NAMESPACE``, default ``identify``), so one ACL
pattern (``~identify:*``) covers them.  Each key carries a Redis Cluster hash tag, and every Lua
script touches the keys of one tag only: a shard's keys share ``{sN}``, the few global keys share
``{<namespace>}``.  On one Redis the tags change nothing; on a cluster each shard's keys live on
one node, and shards spread over the masters.  What is global but must grow with the queue (totals,
dead-letter counts) is kept per shard and summed by the readers (``worker/status.py``).

Global keys ``{<namespace>}``
    meta           HASH   layout of the queue (shard count, entry format), the workers' linger, any
                          request size learned from a 413
    wakeups        ZSET   shard -> time (ms) its drain is due; producers add, the dispatcher pops
    kick           LIST   at most one element: wakes a dispatcher blocked in BLPOP
    blocked        HASH   set while a configuration error (such as a bad API key) stops sending
    ratelimit:*    STRING GCRA state of the global request and record limits
    workers        ZSET   worker node name -> last heartbeat (ms)
    import:<job>   HASH   an import job: its input, the run that owns it, its state, and the line up to
                          which every shard has its records (expires 30 days after its last update)
    kombu:*        Celery's own keys (its broker queue of drain tasks), under kombu's global prefix:
                          on the broker (``IDENTIFY_BROKER_URL``), which on a cluster is a Redis apart

Per shard ``{sN}``
    layout         STRING ``<shards>|<entry format>``: the layout this shard was written with, checked by
                          every script that appends (a producer with another shard count is refused)
    queue          LIST   entries to send, oldest first
    seq            STRING the last sequence number given to an entry of the shard (worker/drain/waiting.py)
    total          STRING records of the shard accepted and not yet delivered or dead-lettered (the cap)
    inflight       LIST   entries a drainer claimed and has not settled; read again first on a crash
    lease          STRING token of the drainer that owns the shard, with a TTL
    state          HASH   retry time, recovery count, `kept` mark of a clean release, dispatch time,
                          the token of the last claim (to tell a lost lease from a crash)
    parked         ZSET   user -> release time (ms) of a user whose updates wait (429 hold, budget, replay)
    parked_why     HASH   user -> why it waits: held (429), deferred (hourly budget), replayed
    waiting        ZSET   every waiting update of the shard, all at score 0, ordered by member:
                          ``<user key length>:<user key>|<seq, 15 digits>|<entry>`` (worker/drain/waiting.py)
    stats          HASH   counters for `status`: delivered, requests, dead_lettered, replayed, the last
                          error and when, the last delivery
    minutes        HASH   records delivered and enqueued per minute, a ring of the last 64 (rates, the
                          console's chart)
    dlq:entries    HASH   dead-letter id (``<shard>-<n>``) -> entry (JSON)
    dlq:index      ZSET   dead-letter id -> failed-at time (ms), for listing in order
    dlq:counts     HASH   reason -> number of the shard's dead-letter entries
    dlq:seq        STRING the last number given to a dead letter of the shard
    budget:<slot>  HASH   user -> identifications sent in that ten-minute slot
    fp:<user key>  STRING 12-byte fingerprint of the last record an import enqueued for the user
                          (--skip-unchanged; TTL --fingerprint-ttl; the worker deletes it on dead-letter)
    import:<job>   HASH   an import job's progress in this shard: the run that wrote it and the line and
                          byte offset up to which the shard has the job's records (written with them)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShardKeys:
    shard: int
    layout: str
    queue: str
    seq: str
    total: str
    inflight: str
    lease: str
    state: str
    parked: str
    parked_why: str
    waiting: str
    stats: str
    minutes: str
    dlq_entries: str
    dlq_index: str
    dlq_counts: str
    dlq_seq: str
    _prefix: str

    def budget(self, slot: int) -> str:
        return f"{self._prefix}:budget:{slot}"

    def fingerprint(self, user_key: str) -> str:
        return f"{self._prefix}:fp:{user_key}"

    def import_progress(self, job: str) -> str:
        return f"{self._prefix}:import:{job}"

    @property
    def pattern(self) -> str:
        """A glob of every key of the shard."""
        return f"{self._prefix}:*"


@dataclass(frozen=True)
class Keys:
    namespace: str
    meta: str = field(init=False)
    wakeups: str = field(init=False)
    kick: str = field(init=False)
    blocked: str = field(init=False)
    ratelimit_requests: str = field(init=False)
    ratelimit_records: str = field(init=False)
    workers: str = field(init=False)
    #: Celery's queue for drain tasks (named after the namespace, so that two namespaces may share a
    #: RabbitMQ), and the prefix kombu puts before every key it writes.
    celery_queue: str = field(init=False)
    kombu_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        g = f"{self.namespace}:{{{self.namespace}}}"
        for name, value in {
            "meta": f"{g}:meta",
            "wakeups": f"{g}:wakeups",
            "kick": f"{g}:kick",
            "blocked": f"{g}:blocked",
            "ratelimit_requests": f"{g}:ratelimit:requests",
            "ratelimit_records": f"{g}:ratelimit:records",
            "workers": f"{g}:workers",
            "celery_queue": f"{self.namespace}.drain",
            "kombu_prefix": f"{self.namespace}:kombu:",
        }.items():
            object.__setattr__(self, name, value)

    def shard(self, shard: int) -> ShardKeys:
        prefix = f"{self.namespace}:{{s{shard}}}"
        return ShardKeys(
            shard=shard,
            layout=f"{prefix}:layout",
            queue=f"{prefix}:queue",
            seq=f"{prefix}:seq",
            total=f"{prefix}:total",
            inflight=f"{prefix}:inflight",
            lease=f"{prefix}:lease",
            state=f"{prefix}:state",
            parked=f"{prefix}:parked",
            parked_why=f"{prefix}:parked_why",
            waiting=f"{prefix}:waiting",
            stats=f"{prefix}:stats",
            minutes=f"{prefix}:minutes",
            dlq_entries=f"{prefix}:dlq:entries",
            dlq_index=f"{prefix}:dlq:index",
            dlq_counts=f"{prefix}:dlq:counts",
            dlq_seq=f"{prefix}:dlq:seq",
            _prefix=prefix,
        )

    def import_job(self, job: str) -> str:
        return f"{self.namespace}:{{{self.namespace}}}:import:{job}"

    def pattern(self) -> str:
        """A glob covering every key of this namespace, Celery's included."""
        return f"{self.namespace}:*"
