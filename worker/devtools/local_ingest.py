"""``identify-queue serve`` as a real process on a free loopback port, for the tests and benchmarks.

Its stdout and stderr go to one file, so that a test can read everything the server printed (and
check that no token is in it).  Started with ``--port 0``, it prints ``listening on URL`` once the
socket is bound; that line is what ``start`` waits for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker.devtools.local_stack import COMMAND

_LISTENING = "listening on "


class IngestProcess:
    def __init__(
        self,
        env: Mapping[str, str],
        *,
        args: Sequence[str] = (),
        log_path: Path | None = None,
        command: Sequence[str] = (*COMMAND, "serve"),
    ) -> None:
        """``command`` is another program taking ``--host`` and ``--port`` (the benchmark's baseline)."""
        self.env = {**os.environ, **env}
        self.args = list(args)
        self.command = list(command)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="identify-queue-serve-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def identify_url(self) -> str:
        return f"{self.url}/identify"

    @property
    def health_url(self) -> str:
        return f"{self.url}/healthz"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        """Everything the server printed so far, stdout and stderr."""
        return self.log_path.read_text(errors="replace")

    def start(self, timeout_s: float = 20.0) -> IngestProcess:
        args = [*self.command, "--host", "127.0.0.1", "--port", "0", *self.args]
        self.log_path.write_text("")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.output().splitlines():
                if line.startswith(_LISTENING):
                    self.url = line.removeprefix(_LISTENING).strip()
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"{args} exited with {self.process.returncode}: {self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args} did not start in {timeout_s} s: {self.output()}")
            time.sleep(0.02)

    def wait(self, timeout_s: float = 20.0) -> int:
        """Wait for the process to exit by itself (a refused configuration); its exit code."""
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in 10 s; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def __enter__(self) -> IngestProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
