"""The README's first command: `identify-queue demo` runs the whole job on embedded defaults."""

from __future__ import annotations

import os
import subprocess

from worker.devtools.local_stack import COMMAND


def test_the_demo_delivers_everything_in_order_on_embedded_defaults() -> None:
    # As on a fresh machine: no REDIS_URL (a private redis-server), no API key (the local server)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "AMPLITUDE_", "IDENTIFY_"))}
    result = subprocess.run([*COMMAND, "demo", "--users", "60", "--updates", "4"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "private redis-server" in result.stdout
    assert "delivered  240 updates" in result.stdout
    assert "60 of 60 users received their updates in the order enqueued; 60 hold their last update" in result.stdout
