"""Bulk import: a file of identifications into the queue, resumably, in constant memory.

    from producers import IdentifyProducer
    from producers.importer import Importer, ImportOptions

``run.py`` drives it: ``source.py`` reads the input (a file, gzip, stdin), ``parse.py`` turns
lines into records (JSON Lines, or CSV by ``csv_columns.py``'s rules), ``job.py`` keeps the job's
position in Redis with each chunk, ``fingerprint.py`` skips unchanged users, ``report.py`` shows
progress and rejects; ``options.py`` holds what the command line sets.
"""

from producers.importer.options import CsvOptions, ImportOptions
from producers.importer.run import Importer

__all__ = ["CsvOptions", "ImportOptions", "Importer"]
