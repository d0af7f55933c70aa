"""Import identifications from a file: validate each line, enqueue the valid ones in chunks.

Memory stays constant whatever the file's size: lines are read, validated and enqueued a chunk at
a time.  A rejected line is reported with its number and reason and does not stop the import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from producers.errors import InvalidRecord
from producers.producer import IdentifyProducer
from producers.record import ValidRecord, validate_json

Reject = Callable[[int, InvalidRecord], None]


@dataclass
class ImportReport:
    lines: int = 0
    enqueued: int = 0
    rejected: int = 0


def import_jsonl(
    lines: Iterable[bytes],
    producer: IdentifyProducer,
    *,
    on_reject: Reject,
    chunk_size: int = 1000,
) -> ImportReport:
    """Enqueue every valid line of a JSON Lines stream; blank lines are skipped."""
    report = ImportReport()
    limits = {
        "min_id_length": producer.config.min_id_length,
        "max_record_bytes": producer.config.max_record_bytes,
    }
    chunk: list[ValidRecord] = []
    for number, line in enumerate(lines, start=1):
        report.lines = number
        if not line.strip():
            continue
        try:
            chunk.append(validate_json(line, **limits))
        except InvalidRecord as exc:
            report.rejected += 1
            on_reject(number, exc)
            continue
        if len(chunk) >= chunk_size:
            report.enqueued += producer.enqueue_valid(chunk)
            chunk = []
    if chunk:
        report.enqueued += producer.enqueue_valid(chunk)
    return report
