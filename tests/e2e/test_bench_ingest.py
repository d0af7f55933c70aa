"""The ingest benchmark runs, and returns the table bench/run.py prints (a small run)."""

from __future__ import annotations

from pathlib import Path

from bench.ingest import bench_ingest


def test_bench_ingest_returns_a_table(tmp_path: Path) -> None:
    table = bench_ingest(requests=40, clients=2, threads=2, per_request=10, repeats=1, logs=tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| server | requests/s |")
    assert rows[1].startswith("| HTTP floor") and rows[2].startswith("| `identify-queue serve`")
    assert "2 client processes" in table and "waitress with 2 threads" in table
