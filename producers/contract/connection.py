"""Connecting to Redis, and translating redis-py's exceptions where they enter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis

from producers.contract.errors import StoreError


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` with timeouts, so that a dead Redis fails a call instead of hanging it."""
    options.setdefault("socket_connect_timeout", 5)
    options.setdefault("socket_timeout", 30)
    options.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(url, **options)


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn a redis-py exception into StoreError naming what we were doing."""
    try:
        yield
    except redis.ConnectionError as exc:
        raise StoreError(f"{action}: Redis is unreachable ({exc})") from exc
    except redis.TimeoutError as exc:
        raise StoreError(f"{action}: Redis did not answer in time ({exc})") from exc
    except redis.ResponseError as exc:
        raise StoreError(f"{action}: Redis refused the command ({exc})") from exc
