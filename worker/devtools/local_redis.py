"""Start a private redis-server on a free loopback port: for the demo, the tests and the benchmarks.

It never touches a Redis that is already running (6379 included): it picks a free port, keeps its
files in its own directory, and runs with ``maxmemory-policy noeviction`` as production must.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from producers.contract.errors import ConfigError, StoreError
from worker.devtools.tls import TlsFiles

#: Ports this process has handed out: a port is free until its server binds it, so two calls in a row
#: (a cluster's nodes and their bus ports) could otherwise both return it.
_handed_out: set[int] = set()


def free_port(*, stable: bool = False) -> int:
    """A free loopback port.  ``stable``: below the kernel's ephemeral range, for a server that
    is restarted on the same port (an ephemeral port may meanwhile be taken as the source port of
    an outgoing connection, such as a worker retrying its requests)."""
    if stable:
        low = _ephemeral_low()
        for _ in range(200):
            port = random.randrange(max(1024, low - 12000), low)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _handed_out.add(port)
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
    """A redis-server of our own.  ``extra``: more arguments (an ACL, a replica's ``--replicaof``);
    ``tls``: serve TLS only, with these files (worker/devtools/tls.py makes them)."""

    def __init__(
        self, *, port: int | None = None, appendonly: bool = False, directory: str | None = None,
        extra: Sequence[str] = (), tls: TlsFiles | None = None,
    ) -> None:  # fmt: skip
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ConfigError(
                "redis-server is not installed and REDIS_URL is not set: install Redis "
                "(`apt-get install redis-server`, `brew install redis`) or point REDIS_URL at one"
            )
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = list(extra)
        self.tls = tls
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="identify-queue-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        assert self.binary is not None
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--maxmemory-policy", "noeviction", "--protected-mode", "yes", "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]  # fmt: skip
        if self.tls is not None:
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                         "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                         "--tls-auth-clients", "optional"]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = self.admin(socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        err = self.process.stderr.read().decode() if self.process.stderr else ""
                        with contextlib.suppress(OSError):
                            # redis-server writes why it stopped to its log file, not to stderr
                            err += "\n".join(((self.dir / "redis.log").read_text().splitlines())[-5:])
                        self.stop()
                        raise StoreError(f"redis-server exited at start: {err.strip()}") from None
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"redis-server did not answer on port {self.port} within {timeout_s} s"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def admin(self, **options: Any) -> redis.Redis:
        """A client of the default user (the tests' and benchmarks' own, never a product's)."""
        if self.tls is not None:
            return redis.Redis(port=self.port, ssl=True, ssl_ca_certs=str(self.tls.ca), **options)
        return redis.Redis(port=self.port, **options)

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


class LocalSentinel:
    """A `redis-server --sentinel` of our own watching one master as ``service`` (quorum 1), with
    short timeouts so that a failover takes seconds, for tests and benchmarks."""

    def __init__(self, master_port: int, *, service: str = "mymaster", down_after_ms: int = 1000) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.service = service
        self.dir = Path(tempfile.mkdtemp(prefix="identify-queue-sentinel-"))
        (self.dir / "sentinel.conf").write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} 3000", f"sentinel parallel-syncs {service} 1", "",
        ]))  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> LocalSentinel:
        self.process = subprocess.Popen([self.binary, str(self.dir / "sentinel.conf"), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.execute_command("SENTINEL", "get-master-addr-by-name", self.service):  # type: ignore[no-untyped-call]
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise StoreError(f"redis sentinel did not start on port {self.port} within {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def master_port(self) -> int | None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            addr = client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)  # type: ignore[no-untyped-call]
            return int(addr[1]) if addr else None
        finally:
            client.close()

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/{db}"

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
