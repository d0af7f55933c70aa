"""What every command shares: one line on stderr and a documented exit code for each error.

Exit codes, stable for scripts:
    0  success
    1  some input was rejected (each rejection is reported on stderr)
    2  usage or configuration error (the message names the flag or variable)
    3  the queue is full (IDENTIFY_MAX_QUEUED)
    4  Redis is unreachable or refused a command
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from producers.contract.errors import (
    ConfigError,
    ImportJobError,
    QueueFull,
    QueueMismatch,
    SourceError,
    StoreError,
)

EXIT_REJECTED, EXIT_CONFIG, EXIT_FULL, EXIT_STORE = 1, 2, 3, 4
F = TypeVar("F", bound=Callable[..., Any])

ENVIRONMENT_HELP = """
\b
Configuration comes from the environment (see docs/configuration.md):
  REDIS_URL                 redis://127.0.0.1:6379/0
  AMPLITUDE_API_KEY         the project's API key (the worker needs it)
  AMPLITUDE_IDENTIFY_URL    https://api2.amplitude.com/identify (AMPLITUDE_REGION=eu: the EU one)
  IDENTIFY_NAMESPACE        identify      prefix of every Redis key
  IDENTIFY_SHARDS           16            partitions by user (same value everywhere)
  IDENTIFY_BATCH_SIZE       1000          records per request (at most 2000)
  IDENTIFY_BATCH_MAX_BYTES  950000        bytes per request body (at most 1000000)
  IDENTIFY_BATCH_LINGER_MS  200           wait for more records before a partial batch
  IDENTIFY_MAX_QUEUED       10000000      producers get "queue full" past it
"""


def friendly_errors(func: F) -> F:
    """Turn our errors into one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, QueueMismatch, ImportJobError) as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except QueueFull as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_FULL)
        except SourceError as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_REJECTED)
        except StoreError as exc:
            click.echo(f"identify-queue: {exc}", err=True)
            sys.exit(EXIT_STORE)

    return wrapper  # type: ignore[return-value]
