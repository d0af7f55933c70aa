"""The light client any backend imports: validate identifications and enqueue them into Redis.

Needs only redis and orjson; it never imports Celery.
"""

from producers.async_producer import AsyncIdentifyProducer
from producers.contract.errors import (
    ConfigError,
    IdentifyQueueError,
    ImportJobError,
    InvalidRecord,
    QueueFull,
    QueueMismatch,
    SourceError,
    StoreError,
)
from producers.contract.settings import QueueConfig
from producers.producer import EnqueueReport, IdentifyProducer
from producers.record import FIELDS, OPERATIONS, ValidRecord, validate, validate_json

__all__ = [
    "FIELDS",
    "OPERATIONS",
    "AsyncIdentifyProducer",
    "ConfigError",
    "EnqueueReport",
    "IdentifyProducer",
    "IdentifyQueueError",
    "ImportJobError",
    "InvalidRecord",
    "QueueConfig",
    "QueueFull",
    "QueueMismatch",
    "SourceError",
    "StoreError",
    "ValidRecord",
    "validate",
    "validate_json",
]
