"""Settings of the operator's console (``identify-queue console``), read once from the environment.

The queue settings (``REDIS_URL``, ``IDENTIFY_*``) are the producers' and workers'; these add the
console's own.  The token is kept as a SHA-256 digest only, as the ingest endpoint keeps its own:
the object can be printed without revealing it, and digests of equal length compare in constant
time without leaking the token's length.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from producers.contract.errors import ConfigError
from producers.contract.settings import QueueConfig, env_bool, env_int, env_str, log_format_from_env, log_level_from_env
from producers.ingest.settings import MIN_TOKEN_LENGTH, token_digest

TOKEN_VARIABLE = "IDENTIFY_CONSOLE_TOKEN"  # noqa: S105 (a variable name, not a secret)


@dataclass(frozen=True)
class ConsoleSettings:
    queue: QueueConfig = field(default_factory=QueueConfig)
    #: Digest of the operators' token; None only with ``--insecure-no-auth``.
    token_digest: bytes | None = field(default=None, repr=False)
    #: Loopback by default: the console can replay and purge, and speaks plain HTTP.
    host: str = "127.0.0.1"
    port: int = 8091
    threads: int = 4
    #: Pages only: every action (replay, purge) is refused.
    read_only: bool = False
    #: How many dead letters and waiting users one page lists at most.
    page_size: int = 200
    #: Seconds between refreshes of the overview in the browser.
    refresh_s: int = 5
    log_level: str = "INFO"
    log_format: str = "text"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        insecure_no_auth: bool = False,
        read_only: bool = False,
        host: str | None = None,
        port: int | None = None,
    ) -> ConsoleSettings:
        """Read the environment; the command line's options win over it."""
        env = os.environ if env is None else env
        return cls(
            queue=QueueConfig.from_env(env),
            token_digest=_token(env, insecure_no_auth),
            host=host or env_str(env, "IDENTIFY_CONSOLE_HOST", cls.host),
            port=port if port is not None else env_int(env, "IDENTIFY_CONSOLE_PORT", cls.port, 0, 65535),
            threads=env_int(env, "IDENTIFY_CONSOLE_THREADS", cls.threads, 1, 64),
            read_only=read_only or env_bool(env, "IDENTIFY_CONSOLE_READ_ONLY", cls.read_only),
            page_size=env_int(env, "IDENTIFY_CONSOLE_PAGE_SIZE", cls.page_size, 10, 5000),
            refresh_s=env_int(env, "IDENTIFY_CONSOLE_REFRESH_S", cls.refresh_s, 1, 3600),
            log_level=log_level_from_env(env),
            log_format=log_format_from_env(env),
        )


def _token(env: Mapping[str, str], insecure_no_auth: bool) -> bytes | None:
    raw = env.get(TOKEN_VARIABLE, "").strip()
    if insecure_no_auth:
        if raw:
            raise ConfigError(f"--insecure-no-auth and {TOKEN_VARIABLE} are both given; choose one")
        return None
    if not raw:
        raise ConfigError(
            f"{TOKEN_VARIABLE} is not set: set it to a secret of at least {MIN_TOKEN_LENGTH} characters, "
            "or pass --insecure-no-auth where nothing untrusted can reach the console"
        )
    # The message says why, never what the token is.
    if len(raw) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{TOKEN_VARIABLE} is {len(raw)} characters; at least {MIN_TOKEN_LENGTH} are needed")
    if any(c.isspace() for c in raw):
        raise ConfigError(f"{TOKEN_VARIABLE} contains whitespace")
    return token_digest(raw)
