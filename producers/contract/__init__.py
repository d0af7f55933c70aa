"""The contract producers and workers share: Redis keys, the queue entry, errors, settings, connection.

Both sides import it; it imports neither.  A record's way reads in one direction: a producer
validates it (``producers/record.py``) and appends it as an entry (``entry.py``) under the keys of
``keys.py``; the worker (``worker/``) claims, sends and settles it through the same keys.
"""
