"""Reading settings from the environment, and the settings producers and workers share.

Every variable is read once, into a frozen object, and a malformed value fails at start with the
variable's name (``IDENTIFY_SHARDS must be an integer between 1 and 4096, got 'x'``).  The worker's
own settings (``worker/settings.py``) build on the same readers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from producers.contract.connection import parse_url
from producers.contract.errors import ConfigError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be an integer between {lo} and {hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer between {lo} and {hi}, got {value}")
    return value


def env_optional_float(env: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    """A positive number, or None when unset (used for limits where unset means unlimited)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    return env_float(env, name, 0.0, lo, hi)


def env_float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number between {lo:g} and {hi:g}, got {raw!r}") from None
    if not lo <= value <= hi:  # also refuses NaN
        raise ConfigError(f"{name} must be a number between {lo:g} and {hi:g}, got {raw}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off, got {raw!r}")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def log_level_from_env(env: Mapping[str, str]) -> str:
    return env_choice(env, "IDENTIFY_LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()


def log_format_from_env(env: Mapping[str, str]) -> str:
    """`text` for people, `json` (one object per line) for log pipelines."""
    return env_choice(env, "IDENTIFY_LOG_FORMAT", "text", ("text", "json"))


def redis_url_from_env(env: Mapping[str, str], name: str = "REDIS_URL") -> str:
    """A Redis URL in one of the forms producers/contract/connection.py reads; checked at start."""
    url = env_str(env, name, DEFAULT_REDIS_URL)
    parse_url(url, name)
    return url


@dataclass(frozen=True)
class QueueConfig:
    """What producers and workers must agree on to share one queue in Redis."""

    redis_url: str = DEFAULT_REDIS_URL
    #: Prefix of every Redis key and of the Celery queue name; lets several queues share a Redis.
    namespace: str = "identify"
    #: Partitions by user.  One drainer per shard at a time, so this caps drain parallelism.
    #: Changing it while records are queued would reorder users: Redis remembers the count.
    shards: int = 16
    #: Records accepted but not yet delivered or dead-lettered; past it producers get QueueFull.
    max_queued: int = 10_000_000
    #: HTTP V2 refuses ids shorter than 5 characters unless the project raised the minimum.
    min_id_length: int = 5
    #: Largest identification accepted, as encoded JSON; it must fit in one request.
    max_record_bytes: int = 64 * 1024
    #: Acknowledged means replicated: an enqueue returns only once this many replicas confirm it
    #: (Redis WAIT), else it fails with NotReplicated and may be retried.  0: the master's word.
    min_replicas: int = 0
    replica_timeout_ms: int = 1000
    #: Concurrent identify() calls of one producer share one enqueue (producers/grouping.py);
    #: off, each call is its own round trip.
    group_commit: bool = True

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ConfigError(
                f"IDENTIFY_NAMESPACE must be 1-64 characters of letters, digits, _ . -, got {self.namespace!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> QueueConfig:
        env = os.environ if env is None else env
        return cls(
            redis_url=redis_url_from_env(env),
            namespace=env_str(env, "IDENTIFY_NAMESPACE", cls.namespace),
            shards=env_int(env, "IDENTIFY_SHARDS", cls.shards, 1, 4096),
            max_queued=env_int(env, "IDENTIFY_MAX_QUEUED", cls.max_queued, 1, 10**12),
            min_id_length=env_int(env, "IDENTIFY_MIN_ID_LENGTH", cls.min_id_length, 1, 1024),
            max_record_bytes=env_int(env, "IDENTIFY_MAX_RECORD_BYTES", cls.max_record_bytes, 256, 900_000),
            min_replicas=env_int(env, "IDENTIFY_MIN_REPLICAS", cls.min_replicas, 0, 16),
            replica_timeout_ms=env_int(env, "IDENTIFY_REPLICA_TIMEOUT_MS", cls.replica_timeout_ms, 1, 600_000),
            group_commit=env_bool(env, "IDENTIFY_GROUP_COMMIT", cls.group_commit),
        )
