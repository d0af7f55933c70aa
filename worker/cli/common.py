"""What every command shares: one line on stderr and a documented exit code for each error.

Exit codes, stable for scripts:
    0  success
    1  some input was rejected (each rejection is reported on stderr)
    2  usage or configuration error (the message names the flag or variable)
    3  the queue is full (IDENTIFY_MAX_QUEUED)
    4  Redis is unreachable or refused a command
    5  an unexpected error: a bug (IDENTIFY_DEBUG=1 shows its traceback)
  130  interrupted (Ctrl-C)

No traceback reaches a user: every error a command can meet is translated into one of these, and
anything else is reported on one line as a bug, the traceback only on request.
"""

from __future__ import annotations

import functools
import os
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

EXIT_REJECTED, EXIT_CONFIG, EXIT_FULL, EXIT_STORE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
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
            click.echo(f"identify-queue: {one_line(str(exc), 2000)}", err=True)
            sys.exit(EXIT_CONFIG)
        except QueueFull as exc:
            click.echo(f"identify-queue: {one_line(str(exc), 2000)}", err=True)
            sys.exit(EXIT_FULL)
        except SourceError as exc:
            click.echo(f"identify-queue: {one_line(str(exc), 2000)}", err=True)
            sys.exit(EXIT_REJECTED)
        except StoreError as exc:
            click.echo(f"identify-queue: {one_line(str(exc), 2000)}", err=True)
            sys.exit(EXIT_STORE)
        except KeyboardInterrupt:
            click.echo("identify-queue: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise  # click's own: a usage error (exit 2), a declined confirmation
        except Exception as exc:
            if os.environ.get("IDENTIFY_DEBUG") == "1":
                raise
            click.echo(f"identify-queue: unexpected error, a bug: {type(exc).__name__}: {one_line(str(exc))} "
                       "(IDENTIFY_DEBUG=1 shows the traceback; please report it)", err=True)  # fmt: skip
            sys.exit(EXIT_BUG)

    return wrapper  # type: ignore[return-value]


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line of at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
