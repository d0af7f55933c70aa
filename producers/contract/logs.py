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
