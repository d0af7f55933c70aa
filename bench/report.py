"""Where every benchmark's table goes: printed, and written to bench/results/ for the docs."""

from __future__ import annotations

from pathlib import Path


def publish(text: str, out: Path) -> None:
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
