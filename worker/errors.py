"""The worker's own errors, under the contract's tree (producers/contract/errors.py draws it whole).

StoreError, ScriptRefusal
└── LeaseLost            LEASE_LOST: the shard's lease expired and may belong to another drainer
SinkError                the POST to /identify got no HTTP answer (requests' exceptions, translated)
├── SinkTimeout          no answer in time: the request may or may not have been applied
└── SinkConnectionError  the endpoint could not be reached
"""

from __future__ import annotations

from producers.contract.errors import IdentifyQueueError, ScriptRefusal, StoreError


class LeaseLost(StoreError, ScriptRefusal):
    """The shard's lease expired and may belong to another drainer: stop and touch nothing."""

    code = "LEASE_LOST"

    def __init__(self, message: str = "", fields: dict[str, str] | None = None) -> None:
        ScriptRefusal.__init__(self, message or "the shard's lease expired and may belong to another drainer", fields)


class SinkError(IdentifyQueueError):
    """A POST to /identify ended without an HTTP response."""


class SinkTimeout(SinkError):
    """The endpoint did not answer in time; the request may or may not have been applied."""


class SinkConnectionError(SinkError):
    """The endpoint could not be reached."""
