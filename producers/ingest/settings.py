"""Settings of the HTTP ingest endpoint (``identify-queue serve``), read once from the environment.

The queue settings (``REDIS_URL``, ``IDENTIFY_*``) are the producers'; these add the endpoint's own.
A malformed value stops the command at start with the variable's name.  The ingest token is kept
only as SHA-256 digests: the object can be printed or logged without revealing it, and comparing
digests of equal length in constant time leaks nothing, not even the token's length.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from producers.contract.errors import ConfigError
from producers.contract.settings import QueueConfig, env_int, env_str, log_format_from_env, log_level_from_env

TOKEN_VARIABLE = "IDENTIFY_INGEST_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: Shorter tokens can be guessed; 16 characters of `secrets.token_urlsafe()` is 96 bits.
MIN_TOKEN_LENGTH = 16


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class IngestSettings:
    """What ``identify-queue serve`` runs with; every default is documented where it is defined."""

    queue: QueueConfig = field(default_factory=QueueConfig)
    #: Digests of the accepted tokens (several while one is rotated out); None: no authentication,
    #: which only ``--insecure-no-auth`` asks for.  The empty default accepts nobody.
    token_digests: tuple[bytes, ...] | None = field(default=(), repr=False)
    #: Loopback by default: listening on every interface (0.0.0.0) is for containers, behind a
    #: proxy that terminates TLS, since tokens and records travel in clear HTTP.
    host: str = "127.0.0.1"
    port: int = 8090
    #: Request threads.  Validation holds the GIL, the enqueue waits on Redis without it; more
    #: threads than this only queue for the GIL on a small machine (see bench/ingest.py).
    threads: int = 4
    #: Amplitude's limits, so that a client written against Amplitude behaves the same here.
    max_body_bytes: int = 1_000_000
    max_records: int = 2000
    #: A connection idle this long is closed (waitress's channel_timeout).
    idle_timeout_s: int = 30
    #: Open connections at most; past it waitress stops accepting until some close.
    connection_limit: int = 100
    #: Retry-After of a 503 (queue full, Redis unreachable).
    retry_after_s: int = 10
    log_level: str = "INFO"
    #: Plain text, or one JSON object per line (IDENTIFY_LOG_FORMAT=json), as the worker.
    log_format: str = "text"

    @property
    def server_body_limit(self) -> int:
        """The hard cap given to waitress, which answers bodies past it with its own plain 413.

        It is above ``max_body_bytes`` so that a body somewhat too large still gets an
        Amplitude-shaped 413 from the application; waitress buffers bodies past 512 KB in a
        temporary file, so the slack costs disk, not memory.
        """
        return 2 * self.max_body_bytes + 1

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        insecure_no_auth: bool = False,
        host: str | None = None,
        port: int | None = None,
        threads: int | None = None,
    ) -> IngestSettings:
        """Read the environment; the command line's ``host``, ``port`` and ``threads`` win over it."""
        env = os.environ if env is None else env
        return cls(
            queue=QueueConfig.from_env(env),
            token_digests=_token_digests(env, insecure_no_auth),
            host=host or env_str(env, "IDENTIFY_INGEST_HOST", cls.host),
            port=port if port is not None else env_int(env, "IDENTIFY_INGEST_PORT", cls.port, 0, 65535),
            threads=threads or env_int(env, "IDENTIFY_INGEST_THREADS", cls.threads, 1, 256),
            max_body_bytes=env_int(env, "IDENTIFY_INGEST_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 100_000_000),
            max_records=env_int(env, "IDENTIFY_INGEST_MAX_RECORDS", cls.max_records, 1, 100_000),
            idle_timeout_s=env_int(env, "IDENTIFY_INGEST_IDLE_TIMEOUT_S", cls.idle_timeout_s, 1, 3600),
            connection_limit=env_int(env, "IDENTIFY_INGEST_CONNECTION_LIMIT", cls.connection_limit, 1, 100_000),
            retry_after_s=env_int(env, "IDENTIFY_INGEST_RETRY_AFTER_S", cls.retry_after_s, 1, 3600),
            log_level=log_level_from_env(env),
            log_format=log_format_from_env(env),
        )


def _token_digests(env: Mapping[str, str], insecure_no_auth: bool) -> tuple[bytes, ...] | None:
    raw = env.get(TOKEN_VARIABLE, "").strip()
    if insecure_no_auth:
        if raw:
            raise ConfigError(f"--insecure-no-auth and {TOKEN_VARIABLE} are both given; choose one")
        return None
    if not raw:
        raise ConfigError(
            f"{TOKEN_VARIABLE} is not set: set it to a secret of at least {MIN_TOKEN_LENGTH} characters "
            "(several separated by commas while rotating), or pass --insecure-no-auth on a trusted network"
        )
    tokens = [t.strip() for t in raw.split(",")]
    for position, token in enumerate(tokens, 1):
        # The message says which token and why, never what it is.
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{TOKEN_VARIABLE}: token {position} of {len(tokens)} is {len(token)} characters; "
                f"at least {MIN_TOKEN_LENGTH} are needed"
            )
        if any(c.isspace() for c in token):
            raise ConfigError(f"{TOKEN_VARIABLE}: token {position} of {len(tokens)} contains whitespace")
    return tuple(token_digest(t) for t in tokens)
