"""The local stack as real processes: the Amplitude-compatible server and workers.

The demo, the tests and the benchmarks all start their processes through here, so they exercise
exactly what a user runs: the ``identify-queue`` command in a separate process, talking to Redis
and to the server over loopback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
import requests

COMMAND = [sys.executable, "-m", "worker.cli.main"]


@contextlib.contextmanager
def _log_target(path: Path | None) -> Iterator[IO[bytes] | int]:
    """A file to append a child's output to (closed here once the child has its own copy)."""
    if path is None:
        yield subprocess.DEVNULL
    else:
        with open(path, "ab") as f:
            yield f


class LocalAmplitudeProcess:
    """``identify-queue local-amplitude`` on a free loopback port."""

    def __init__(
        self, api_key: str | None = None, log_path: Path | None = None, keep_records: int | None = None
    ) -> None:
        self.api_key = api_key
        self.log_path = log_path
        self.keep_records = keep_records
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def identify_url(self) -> str:
        return f"{self.base_url}/identify"

    def start(
        self, port: int = 0, timeout_s: float = 20.0, faults: dict[str, Any] | None = None
    ) -> LocalAmplitudeProcess:
        args = [*COMMAND, "local-amplitude", "--host", "127.0.0.1", "--port", str(port)]
        if faults:
            args += ["--faults", orjson.dumps(faults).decode()]
        if self.api_key:
            args += ["--api-key-env", "LOCAL_AMPLITUDE_API_KEY"]
        if self.keep_records is not None:
            args += ["--keep-records", str(self.keep_records)]
        env = {**os.environ, "LOCAL_AMPLITUDE_API_KEY": self.api_key or ""}
        with _log_target(self.log_path) as stderr:
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, env=env)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"local amplitude did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            try:
                requests.get(self.base_url + "/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("local amplitude does not answer")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.process.wait(10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    # The control and inspection endpoints (see worker/devtools/local_amplitude.py).
    def control(self, **faults: Any) -> None:
        requests.post(self.base_url + "/_control", data=orjson.dumps(faults), timeout=5).raise_for_status()

    def reset(self) -> None:
        requests.post(self.base_url + "/_reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(self.base_url + "/_stats", timeout=5)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def accepted(self, since: int = 0) -> list[dict[str, Any]]:
        response = requests.get(self.base_url + "/_accepted", params={"since": since}, timeout=30)
        response.raise_for_status()
        return [orjson.loads(line) for line in response.content.splitlines() if line]

    def arrivals(self) -> list[tuple[float, str]]:
        response = requests.get(self.base_url + "/_arrivals", timeout=30)
        response.raise_for_status()
        return [(float(t), str(u)) for t, u in response.json()]

    def requests_log(self) -> list[tuple[float, int, int, int]]:
        response = requests.get(self.base_url + "/_requests", timeout=30)
        response.raise_for_status()
        return [tuple(r) for r in response.json()]

    def user(self, user_id: str) -> dict[str, Any] | None:
        response = requests.get(f"{self.base_url}/_users/{user_id}", timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class WorkerProcess:
    """``identify-queue worker`` with the given environment, in its own process group."""

    def __init__(self, env: Mapping[str, str], *, name: str = "worker", concurrency: int = 2,
                 pool: str = "prefork", log_path: Path | None = None) -> None:  # fmt: skip
        self.env = {**os.environ, **env}
        self.name = name
        self.concurrency = concurrency
        self.pool = pool
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        args = [*COMMAND, "worker", "--concurrency", str(self.concurrency), "--pool", self.pool,
                "--name", self.name]  # fmt: skip
        with _log_target(self.log_path) as out:
            self.process = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as an orchestrator stops a container: Celery's warm shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        return code

    def kill(self) -> None:
        """``kill -9`` of the whole process group: the main process and its pool children."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # orphaned pool children, if any


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and of its children still alive (Linux /proc).

    Used by the tests (an idle worker must not spin) and the benchmarks (CPU per record).
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out
