"""``--skip-unchanged``: leave out a record equal to what was last enqueued for its user.

A nightly full sync re-sends millions of users of whom few changed.  For each record the importer
computes a fingerprint: 12 bytes of blake2b over the record's canonical JSON (keys sorted, compact),
so key order in the input does not matter.  Redis keeps, per user, the fingerprint of the last
record an import enqueued for that user (``Keys.fingerprint(user_key)``, a string with a TTL).  The
enqueue script compares and writes them in the same call that appends the chunk, so a crash cannot
leave a fingerprint without its record, nor a record without its fingerprint.

Semantics:

- A record is skipped only when its fingerprint equals its user's stored one *and* applying it
  twice is the same as once.  ``$add``, ``$append`` and ``$prepend`` are not: a record using one is
  always enqueued, and clears its user's fingerprint (what Amplitude holds after it is no longer
  "the last record"), so that user's next record is sent too.
- A skip does not refresh the fingerprint's TTL: every user is sent again at least once per TTL
  (``--fingerprint-ttl``, 8 days by default).  That bounds how long Amplitude can differ from the
  warehouse when something other than the import changed a property (producers calling
  ``identify()`` do not touch fingerprints), and lets fingerprints of users who left the export
  expire.
- Contract with the worker: when a record is dead-lettered, the worker deletes its user's
  fingerprint (``Keys.fingerprint(user_key)``), so an update that never reached Amplitude is not
  skipped the next night.  A fingerprint only says "enqueued", not "delivered"; that deletion is
  what makes skipping safe.

Memory: one Redis string with a TTL per user, about 150 bytes with a 32-byte key such as
``identify:fp:u:sync-user-00000001`` (144-154: ``used_memory`` freed by deleting 200,000 of them,
in ``bench/importer.py``): about 140 MB per million users.  The 12 bytes fit Redis's smallest
embedded-string allocation; a shorter digest would save nothing.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import orjson

DIGEST_BYTES = 12
#: Operations whose effect repeats when applied again: never skipped.
NOT_IDEMPOTENT = frozenset({"$add", "$append", "$prepend"})


def fingerprint(record: dict[str, Any]) -> bytes:
    """12 bytes of blake2b over the record's canonical JSON (sorted keys)."""
    return blake2b(orjson.dumps(record, option=orjson.OPT_SORT_KEYS), digest_size=DIGEST_BYTES).digest()


def skippable(record: dict[str, Any]) -> bool:
    """Whether sending the record twice is the same as sending it once."""
    props = record.get("user_properties")
    return type(props) is not dict or NOT_IDEMPOTENT.isdisjoint(props)


def fingerprint_for_skip(record: dict[str, Any]) -> bytes:
    """The value the enqueue script compares and stores: b"" for a record that must always be sent."""
    return fingerprint(record) if skippable(record) else b""
