"""Every exception identify-queue raises, in one tree.

    IdentifyQueueError
    ├── ConfigError              a setting is missing or malformed (names the variable)
    ├── InvalidRecord            an identification breaks a rule (names the field path and the rule)
    ├── QueueFull                accepting more would pass the configured cap on queued records
    ├── SourceError              an import's input cannot be read (corrupt gzip, a line past the limit)
    ├── ImportJobError           an import job cannot start or go on as asked (resume, restart)
    ├── StoreError               Redis could not be reached or refused a command
    │   └── NotReplicated        written, but fewer replicas than IDENTIFY_MIN_REPLICAS confirmed it in time
    ├── ScriptRefusal            a Lua script refused the call; ``code`` is its error reply's first word
    │   ├── QueueMismatch        QUEUE_MISMATCH: Redis holds a queue laid out differently (shard count, format)
    │   ├── ImportTaken          IMPORT_TAKEN: another run of the import job took it over (also an ImportJobError)
    │   ├── ImportAhead          IMPORT_AHEAD: a shard may have some of a chunk's lines, which were not sent
    │   └── LeaseLost            LEASE_LOST: another drainer owns the shard now (worker/errors.py; also a StoreError)
    ├── RequestRefused           the ingest endpoint refuses an HTTP request as a whole (``.status``)
    │   ├── MalformedRequest     400: not form or JSON, no identification, identification not JSON
    │   │   └── UnsupportedContentType   415: a Content-Type or Content-Encoding it cannot read
    │   ├── RequestTooLarge      413: above the body size or identification count limit
    │   ├── MissingCredentials   401: no ingest token in ``api_key`` nor ``Authorization: Bearer``
    │   └── WrongCredentials     403: a token that is not the configured one
    └── SinkError                the POST to /identify got no HTTP answer (worker/errors.py)
        ├── SinkTimeout
        └── SinkConnectionError

This module is the contract's: what producers raise, and what both sides see.  The worker's own
errors (a lost lease, an unanswered POST) extend the tree in ``worker/errors.py``, so nothing of
the worker lives in ``producers/``.  A script's error reply is mapped to the class that declares
its code (``producers/contract/scripts.py``), in this tree and nowhere else.  Third-party
exceptions (redis-py, requests, orjson, sockets) are translated into these where they enter, so
the rest of the code speaks one language.
"""

from __future__ import annotations

from typing import ClassVar


class IdentifyQueueError(Exception):
    """The base of every error identify-queue raises on purpose."""


class ConfigError(IdentifyQueueError):
    """A setting is missing or malformed; the message names the environment variable."""


class InvalidRecord(IdentifyQueueError):
    """An identification breaks one of Amplitude's rules.

    ``field`` is a path such as ``user_properties.$set.plan`` (empty for the record as a whole),
    ``rule`` a short stable code such as ``too_long`` that scripts can match on, and ``index``
    the record's position when it came from a sequence.
    """

    def __init__(self, field: str, rule: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.rule = rule
        self.detail = message
        self.index = index
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"record {self.index}: " if self.index is not None else ""
        return f"{where}{self.field or 'identification'}: {self.detail}"

    def at(self, index: int) -> InvalidRecord:
        """The same error, saying which record of a sequence it was."""
        return InvalidRecord(self.field, self.rule, self.detail, index)


class QueueFull(IdentifyQueueError):
    """Accepting the call would pass IDENTIFY_MAX_QUEUED: on one Redis the whole queue's count, on a
    Redis Cluster a shard's even share of it (``shard`` says which).  Nothing of the refused call
    was enqueued (on a Redis Cluster: of the refused shard's part; the other shards' parts may have
    been: ``enqueued``, ``skipped`` as unchanged and ``already`` held say what they did, and
    ``left`` gives the positions, in the call, of the records they did not carry, the ones to send
    again; None when no part was written)."""

    def __init__(
        self, queued: int, cap: int, enqueued: int = 0, *, skipped: int = 0, already: int = 0,
        left: list[int] | None = None, shard: int | None = None,
    ) -> None:  # fmt: skip
        self.queued = queued
        self.cap = cap
        self.enqueued = enqueued
        self.skipped = skipped
        self.already = already
        self.left = left
        self.shard = shard
        if shard is None:
            limit = f"the queue holds {queued:,} records, IDENTIFY_MAX_QUEUED is {cap:,}"
        else:
            limit = f"shard {shard} holds {queued:,} records, its share of IDENTIFY_MAX_QUEUED is {cap:,}"
        super().__init__(f"queue full: {limit}; {enqueued:,} records of this call were enqueued before it filled")


class ScriptRefusal(IdentifyQueueError):
    """A Lua script refused the call with ``<code> key=value ...``; ``fields`` holds the pairs."""

    code: ClassVar[str] = ""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        self.fields = fields or {}
        super().__init__(message)

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> ScriptRefusal:
        described = " ".join(f"{k}={v}" for k, v in fields.items())
        return cls(f"{cls.code} {described}".strip(), fields)


class QueueMismatch(ScriptRefusal):
    """Redis holds a queue whose layout differs from this process's settings (``fields``: what it holds)."""

    code = "QUEUE_MISMATCH"


class ImportJobError(IdentifyQueueError):
    """An import job cannot start or go on as asked: interrupted and neither resumed nor restarted,
    resumed on a different input, or taken over by another run.  The message says what to do."""


class ImportTaken(ImportJobError, ScriptRefusal):
    """Another run of this import job has taken it over: this run stops."""

    code = "IMPORT_TAKEN"

    def __init__(self, message: str = "", fields: dict[str, str] | None = None) -> None:
        ScriptRefusal.__init__(
            self,
            "another run of this import job has taken it over (started with --resume or --restart); "
            "this run stops here, and everything it enqueued is recorded in the job's progress",
            fields,
        )


class ImportAhead(ScriptRefusal):
    """A chunk of an import job was sent without its records' lines, and a shard already has a line
    past the chunk's start (an earlier run enqueued part of it before it stopped): only the lines
    can tell which records it has.  The importer sends the chunk again with them."""

    code = "IMPORT_AHEAD"
    #: On a Redis Cluster, what the other shards' parts of the call, written, did, and the positions
    #: of the records they did not carry (None: no part was written), as QueueFull has them.
    enqueued: int = 0
    skipped: int = 0
    already: int = 0
    left: list[int] | None = None

    def __init__(self, message: str = "", fields: dict[str, str] | None = None) -> None:
        line = (fields or {}).get("line", "?")
        ScriptRefusal.__init__(
            self,
            f"a shard already has this import job's lines up to line {line}, past the chunk's start: "
            "send the chunk with each record's line (lines=), so that the lines it has are left out",
            fields,
        )


class SourceError(IdentifyQueueError):
    """An import's input cannot be read as the format it claims (corrupt gzip, an endless line,
    a CSV header that cannot be used); the message names the line where it can."""


class StoreError(IdentifyQueueError):
    """Redis could not be reached, or refused a command."""


class SlotMoving(StoreError):
    """A Redis Cluster node did not run the command: its slot is moving to another node (MOVED,
    ASK, TRYAGAIN past redis-py's own retries).  Nothing was run, so running it again is safe."""


class NotReplicated(StoreError):
    """The write reached the master, but fewer replicas than asked confirmed it in time (WAIT).

    The records may or may not survive a failover of the master: not acknowledged, so retry.  A
    retry may enqueue them twice (they were written once already); delivery is at least once.
    """

    def __init__(self, action: str, confirmed: int, wanted: int, timeout_ms: int) -> None:
        self.confirmed, self.wanted = confirmed, wanted
        super().__init__(
            f"{action}: written, but only {confirmed} of {wanted} replica(s) confirmed it within {timeout_ms} ms "
            "(IDENTIFY_MIN_REPLICAS): not acknowledged, retry (a retry may enqueue the records twice)"
        )


class RequestRefused(IdentifyQueueError):
    """The ingest endpoint refuses a request as a whole; ``status`` is the HTTP answer's code.

    ``missing_field`` names the request field that was absent (``api_key``, ``identification``),
    as Amplitude's answers do.  The message is safe to send back: it never quotes a credential.
    """

    status = 400

    def __init__(self, message: str, *, missing_field: str | None = None) -> None:
        self.missing_field = missing_field
        super().__init__(message)


class MalformedRequest(RequestRefused):
    """The body cannot be read as an /identify request (400)."""


class UnsupportedContentType(MalformedRequest):
    """A Content-Type or Content-Encoding the endpoint does not read (415)."""

    status = 415


class RequestTooLarge(RequestRefused):
    """More bytes or more identifications than one request may carry (413)."""

    status = 413


class MissingCredentials(RequestRefused):
    """No ingest token in the request (401)."""

    status = 401


class WrongCredentials(RequestRefused):
    """An ingest token that is not a configured one (403)."""

    status = 403
