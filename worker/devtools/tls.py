"""Certificates for a TLS redis-server of the tests' own: a CA, a server certificate for 127.0.0.1
and localhost, and a client certificate, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from producers.contract.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(directory: Path, name: str = "test-ca") -> TlsFiles:
    """A fresh CA and the certificates it signs, in ``directory`` (valid ten years)."""
    if shutil.which("openssl") is None:
        raise ConfigError("openssl is not installed: it makes the TLS certificates")
    d = directory
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", str(d / "ca.key"), "-out",
        str(d / "ca.crt"), "-days", "3650", "-subj", f"/CN={name}")  # fmt: skip
    for who, usage, san in (("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"), ("client", "clientAuth", "")):
        run("req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", str(d / f"{who}.key"), "-out",
            str(d / f"{who}.csr"), "-subj", f"/CN={who}")  # fmt: skip
        ext = d / f"{who}.ext"
        ext.write_text((f"subjectAltName={san}\n" if san else "") + f"extendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-out", str(d / f"{who}.crt"), "-days", "3650", "-extfile", str(ext))  # fmt: skip
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")
