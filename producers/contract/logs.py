"""Log output: plain text for people, or one JSON object per line (IDENTIFY_LOG_FORMAT=json).

The JSON lines carry ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``process``
and, for an exception, ``exception``; log pipelines (Loki, Elasticsearch, Cloud Logging) parse
them without a pattern.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: How much of one value from outside (a request's path, a header) a log line quotes.
MAX_QUOTED = 200
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(value: object, limit: int = MAX_QUOTED) -> str:
    """``value`` safe to put in a log line: escaped and cut to ``limit`` characters and a count.

    Whatever a request carries is written to the log through this, so that a ``%0A`` in a path
    cannot start a forged line, NUL and terminal escapes never reach the log, and a 10,000-character
    path costs one short line.  Backslashes are escaped too, so an escape in the log is always ours.
    """
    text = value if isinstance(value, str) else str(value)
    head = text[: limit + 1]
    if head.isprintable() and "\\" not in head:
        return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit:,} more)"
    out: list[str] = []
    used = 0
    for index, char in enumerate(head):
        escaped = _ESCAPES.get(char) or (char if char.isprintable() else _escape(char))
        used += len(escaped)
        if used > limit:
            return f"{''.join(out)}...({len(text) - index:,} more)"
        out.append(escaped)
    return "".join(out)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def use_format(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` the chosen format (Celery installs its own handlers)."""
    for handler in logger.handlers:
        handler.setFormatter(formatter(log_format))


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level`` in the chosen format (commands other than the worker)."""
    logging.basicConfig(level=level)
    use_format(logging.getLogger(), log_format)
