"""Start a private redis-server on a free loopback port: for the demo, the tests and the benchmarks.

It never touches a Redis that is already running (6379 included): it picks a free port, keeps its
files in its own directory, and runs with ``maxmemory-policy noeviction`` as production must.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from producers.contract.errors import ConfigError, StoreError


def free_port(*, stable: bool = False) -> int:
    """A free loopback port.  ``stable``: below the kernel's ephemeral range, for a server that
    is restarted on the same port (an ephemeral port may meanwhile be taken as the source port of
    an outgoing connection, such as a worker retrying its requests)."""
    if stable:
        low = _ephemeral_low()
        for _ in range(200):
            port = random.randrange(max(1024, low - 12000), low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bound: int = s.getsockname()[1]
        return bound


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class LocalRedis:
    def __init__(self, *, port: int | None = None, appendonly: bool = False, directory: str | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ConfigError(
                "redis-server is not installed and REDIS_URL is not set: install Redis "
                "(`apt-get install redis-server`, `brew install redis`) or point REDIS_URL at one"
            )
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="identify-queue-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        assert self.binary is not None
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--maxmemory-policy", "noeviction", "--protected-mode", "yes", "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        err = self.process.stderr.read().decode() if self.process.stderr else ""
                        raise StoreError(f"redis-server exited at start: {err.strip()}") from None
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"redis-server did not answer on port {self.port} within {timeout_s} s"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
