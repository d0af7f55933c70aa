"""The worker's settings, read once from the environment into a frozen object.

Each default is written beside its field with the reason for it.  ``Settings.from_env()`` raises
ConfigError naming the variable when a value is malformed, so a bad deployment fails at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from producers.contract.connection import parse_url
from producers.contract.errors import ConfigError
from producers.contract.settings import (
    QueueConfig,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_optional_float,
    env_str,
    log_format_from_env,
    log_level_from_env,
)

US_IDENTIFY_URL = "https://api2.amplitude.com/identify"
EU_IDENTIFY_URL = "https://api.eu.amplitude.com/identify"
#: HTTP V2 refuses requests of 2,000 items or more (413).
MAX_BATCH_SIZE = 2000
#: HTTP V2 refuses request bodies of 1 MB or more (413).
MAX_REQUEST_BYTES = 1_000_000


class Secret:
    """A value that must never be printed: its repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    queue: QueueConfig = field(default_factory=QueueConfig)
    #: Celery's broker (it carries only wake-ups, never records): REDIS_URL unless set apart.
    broker_url: str = ""
    #: Celery's control channel (celery inspect, Flower); needs channel rights on the broker.
    remote_control: bool = True
    api_key: Secret | None = None
    identify_url: str = US_IDENTIFY_URL
    #: Records per request.  Amplitude takes fewer than 2,000; 1,000 leaves room for splitting.
    batch_size: int = 1000
    #: Bytes per request body (form-encoded).  Under Amplitude's 1 MB with room for the API key.
    batch_max_bytes: int = 950_000
    #: How long an idle shard waits for more records before sending a partial batch.
    linger_ms: int = 200
    #: A drainer's claim on a shard; renewed before every request, so it must exceed one request.
    lease_ttl_s: float = 60.0
    #: How long one drain task keeps a busy shard before yielding the worker to other shards.
    drain_slice_s: float = 2.0
    connect_timeout_s: float = 5.0
    #: Per read from the socket; a request that hangs longer counts as a timeout (retryable).
    request_timeout_s: float = 30.0
    #: Backoff of a shard whose requests fail (5xx, timeouts): doubling from base up to cap, jittered.
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    #: A record still failing after this long, or this many attempts, is dead-lettered as
    #: `expired`.  Three days outlast any Amplitude outage on record; attempts rarely bind first.
    retry_max_age_s: float = 3 * 24 * 3600.0
    retry_max_attempts: int = 5000
    #: A request size lowered after a 413 is doubled again after each such quiet period without one.
    request_size_recovery_s: float = 3600.0
    #: While a configuration error (such as an invalid API key) blocks sending, one request probes
    #: again after a backoff growing to this cap.
    probe_cap_s: float = 300.0
    #: A batch whose drain has died this many times in a row is sent one record at a time, and
    #: after two more deaths its first record is dead-lettered as `poison`.
    poison_after: int = 3
    #: Consecutive single records refused with a 400 that names none, before that is taken as a
    #: request-level problem (sending blocks) rather than bad records (dead-lettered).
    unnamed_refusals_before_block: int = 10
    #: A user Amplitude throttles (429) waits at least this long; Amplitude asks for 15 s.
    throttle_pause_s: float = 15.0
    #: Limits shared by every worker on every machine; None: unlimited.
    rate_limit_rps: float | None = None
    rate_limit_records_per_s: float | None = None
    #: Amplitude drops a user's property updates beyond 1,800 an hour; 0 turns the guard off.
    user_updates_per_hour: int = 1800
    #: The window that budget applies to (an hour at Amplitude; shorter for tests).
    budget_window_s: float = 3600.0
    #: Merge one user's consecutive updates within a claim when the result is exactly the same.
    coalesce: bool = True
    #: Celery worker processes on this machine.
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: Prometheus metrics, served by each worker's main process; port 0 turns them off.
    metrics_port: int = 9464
    #: All interfaces by default: Prometheus scrapes from elsewhere, and metrics carry no secrets.
    metrics_host: str = "0.0.0.0"
    #: Plain text for people, or one JSON object per line for log pipelines.
    log_format: str = "text"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.queue.redis_url)
        # Form encoding turns a non-ASCII byte into three: a record must fit a request even then.
        if 3 * self.queue.max_record_bytes + 1024 > self.batch_max_bytes:
            raise ConfigError(
                f"IDENTIFY_MAX_RECORD_BYTES ({self.queue.max_record_bytes}) must be at most a third of "
                f"IDENTIFY_BATCH_MAX_BYTES ({self.batch_max_bytes}) less 1 KB: a record, form-encoded, "
                "must fit in one request"
            )
        if self.lease_ttl_s < self.request_timeout_s + self.connect_timeout_s:
            raise ConfigError(
                f"IDENTIFY_LEASE_TTL_S ({self.lease_ttl_s:g}) must exceed IDENTIFY_HTTP_TIMEOUT_S plus "
                f"IDENTIFY_HTTP_CONNECT_TIMEOUT_S ({self.request_timeout_s + self.connect_timeout_s:g}): "
                "a shard's lease must outlive the request its owner is waiting on"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        key = env.get("AMPLITUDE_API_KEY", "").strip()
        queue = QueueConfig.from_env(env)
        return cls(
            queue=queue,
            broker_url=broker_url_from_env(env, queue.redis_url),
            remote_control=env_bool(env, "IDENTIFY_REMOTE_CONTROL", cls.remote_control),
            api_key=Secret(key) if key else None,
            identify_url=_identify_url(env),
            batch_size=env_int(env, "IDENTIFY_BATCH_SIZE", cls.batch_size, 1, MAX_BATCH_SIZE),
            batch_max_bytes=env_int(env, "IDENTIFY_BATCH_MAX_BYTES", cls.batch_max_bytes, 10_000, MAX_REQUEST_BYTES),
            linger_ms=env_int(env, "IDENTIFY_BATCH_LINGER_MS", cls.linger_ms, 0, 60_000),
            lease_ttl_s=env_float(env, "IDENTIFY_LEASE_TTL_S", cls.lease_ttl_s, 1.0, 3600.0),
            drain_slice_s=env_float(env, "IDENTIFY_DRAIN_SLICE_S", cls.drain_slice_s, 0.05, 600.0),
            connect_timeout_s=env_float(env, "IDENTIFY_HTTP_CONNECT_TIMEOUT_S", cls.connect_timeout_s, 0.1, 120.0),
            request_timeout_s=env_float(env, "IDENTIFY_HTTP_TIMEOUT_S", cls.request_timeout_s, 0.1, 600.0),
            retry_base_s=env_float(env, "IDENTIFY_RETRY_BACKOFF_BASE_S", cls.retry_base_s, 0.01, 3600.0),
            retry_cap_s=env_float(env, "IDENTIFY_RETRY_BACKOFF_CAP_S", cls.retry_cap_s, 0.01, 86_400.0),
            retry_max_age_s=env_float(env, "IDENTIFY_RETRY_MAX_AGE_S", cls.retry_max_age_s, 1.0, 90 * 86_400.0),
            retry_max_attempts=env_int(env, "IDENTIFY_RETRY_MAX_ATTEMPTS", cls.retry_max_attempts, 1, 10**9),
            request_size_recovery_s=env_float(
                env, "IDENTIFY_REQUEST_SIZE_RECOVERY_S", cls.request_size_recovery_s, 1.0, 30 * 86_400.0
            ),
            probe_cap_s=env_float(env, "IDENTIFY_PROBE_CAP_S", cls.probe_cap_s, 0.01, 86_400.0),
            poison_after=env_int(env, "IDENTIFY_POISON_AFTER", cls.poison_after, 1, 1000),
            throttle_pause_s=env_float(env, "IDENTIFY_THROTTLE_PAUSE_S", cls.throttle_pause_s, 0.01, 3600.0),
            rate_limit_rps=env_optional_float(env, "IDENTIFY_RATE_LIMIT_RPS", 0.001, 1e6),
            rate_limit_records_per_s=env_optional_float(env, "IDENTIFY_RATE_LIMIT_RECORDS_PER_S", 0.001, 1e9),
            user_updates_per_hour=env_int(env, "IDENTIFY_USER_UPDATES_PER_HOUR", cls.user_updates_per_hour, 0, 10**9),
            budget_window_s=env_float(env, "IDENTIFY_BUDGET_WINDOW_S", cls.budget_window_s, 0.06, 86_400.0),
            coalesce=env_bool(env, "IDENTIFY_COALESCE", cls.coalesce),
            concurrency=env_int(env, "IDENTIFY_WORKER_CONCURRENCY", os.cpu_count() or 1, 1, 256),
            metrics_port=env_int(env, "IDENTIFY_METRICS_PORT", cls.metrics_port, 0, 65535),
            metrics_host=env_str(env, "IDENTIFY_METRICS_HOST", cls.metrics_host),
            log_format=log_format_from_env(env),
            log_level=log_level_from_env(env),
        )

    @property
    def effective_batch_size(self) -> int:
        """Records per request: one second's worth at most under a records-per-second limit."""
        if self.rate_limit_records_per_s:
            return max(1, min(self.batch_size, int(self.rate_limit_records_per_s)))
        return self.batch_size

    def require_api_key(self) -> Secret:
        if self.api_key is None:
            raise ConfigError(
                f"AMPLITUDE_API_KEY is not set: the worker needs the project's API key to send to {self.identify_url}"
            )
        return self.api_key

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def broker_url_from_env(env: Mapping[str, str], redis_url: str) -> str:
    """IDENTIFY_BROKER_URL: a Redis URL in any form REDIS_URL takes, or amqp:// for RabbitMQ."""
    url = env_str(env, "IDENTIFY_BROKER_URL", "")
    if not url:
        return redis_url
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return url
    parse_url(url, "IDENTIFY_BROKER_URL")
    return url


def _identify_url(env: Mapping[str, str]) -> str:
    region = env_choice(env, "AMPLITUDE_REGION", "us", ("us", "eu"))
    default = EU_IDENTIFY_URL if region == "eu" else US_IDENTIFY_URL
    url = env_str(env, "AMPLITUDE_IDENTIFY_URL", default)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"AMPLITUDE_IDENTIFY_URL must be an http:// or https:// URL, got {url!r}")
    return url
