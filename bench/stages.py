"""Per-record cost of each stage of the hot path, in isolation (best of several timeit runs).

    python -m bench.stages        # writes bench/results/stages.md

These are the figures behind the design notes (docs/design.md): validation, the queue entry, the form
encoder against urllib's urlencode, and merging.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from urllib.parse import urlencode

import orjson

from bench.report import publish
from bench.run import ROOT, make_records
from bench.throttling import event_mix
from producers.contract import entry
from producers.record import compact_json, validate
from worker.drain.merging import coalesce
from worker.drain.sink import batch_json, form_body

N = 1000


def best_us_per_record(run: Callable[[], object], records: int = N, repeat: int = 7, number: int = 20) -> float:
    return min(timeit.repeat(run, number=number, repeat=repeat)) / number / records * 1e6


def main(argv: list[str] | None = None) -> int:
    records = make_records(N, N // 10)
    valid = [validate(r) for r in records]
    raws = [entry.encode(v.user_key, v.data, 1, 1) for v in valid]
    payload = batch_json([v.data for v in valid])
    text = payload.decode()
    hot = [r for r in event_mix(20_000, 2_000) if r["user_id"] == "mix-user-000000"][:N]
    form = {"api_key": "key", "identification": text}
    rows = [
        ("validate an identification (every rule) and encode it", lambda: [validate(r) for r in records]),
        (
            "the same, parsed from JSON (import, serve: encoded first, see design.md)",
            lambda: [validate(r, parsed=True) for r in records],
        ),
        ("queue entry: encode", lambda: [entry.tail(v.user_key, v.data) for v in valid]),
        ("queue entry: decode (a claim of 1,000 at once, as the drain does)", lambda: entry.decode_all(raws)),
        ("request body: our form encoder", lambda: form_body("key", payload)),
        ("request body: urllib.parse.urlencode", lambda: urlencode(form)),
    ]
    rows += [
        ("orjson.dumps, each result dropped at once", lambda: [len(orjson.dumps(r)) for r in records]),
        ("orjson.dumps, a thousand results kept", lambda: [orjson.dumps(r) for r in records]),
        ("orjson.dumps copied to exact size, kept (compact_json)", lambda: [compact_json(r) for r in records]),
    ]
    timings = [(name, best_us_per_record(run)) for name, run in rows]
    timings.append(("merge one hot user's 1,000 consecutive updates",
                    best_us_per_record(lambda: coalesce(hot), len(hot), 3, 3)))  # fmt: skip
    ours, theirs = len(form_body("key", payload)), len(urlencode(form))
    command = "python -m bench.stages " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` (best of 7 runs; batches of {N:,} records of about {len(payload) // N} bytes)",
        "",
        "| stage | us per record |",
        "|---|---:|",
        *[f"| {name} | {us:.2f} |" for name, us in timings],
        "",
        f"Request body for 1,000 records: {ours:,} bytes with our encoder, {theirs:,} with urlencode "
        f"({ours / theirs:.0%}).",
    ]
    text_out = "\n".join(lines)
    publish(text_out, ROOT / "bench" / "results" / "stages.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
