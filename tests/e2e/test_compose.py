"""docker-compose.yml: valid against the Compose specification, and Redis configured as it must be."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_file_is_valid_against_the_compose_specification() -> None:
    # The same JSON schema `docker compose config` checks against, vendored by check-jsonschema.
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_it_where_compose_is_installed() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker has no compose plugin here; the schema test above covers the file")
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_redis_keeps_every_record(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_workers_stop_gracefully_and_wait_for_redis(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"][0] == "worker"
    assert worker["stop_signal"] == "SIGTERM"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_the_image_installs_the_package_and_runs_the_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir ".[flower]"' in dockerfile
    assert 'ENTRYPOINT ["identify-queue"]' in dockerfile


def test_the_full_stack_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"redis", "worker", "ingest", "console", "flower", "local-amplitude"}
    assert services["console"]["command"][0] == "console"
    assert "IDENTIFY_CONSOLE_TOKEN" in services["console"]["environment"]
    assert services["ingest"]["command"][0] == "serve"
    assert "IDENTIFY_INGEST_TOKEN" in services["ingest"]["environment"]
    assert services["flower"]["entrypoint"][:4] == ["celery", "-A", "worker.app", "flower"]
    assert "--events" in services["worker"]["command"]
    # every published port is on loopback: nothing is exposed by accident
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_host_ports_stay_clear_of_the_services_usual_ones(compose: dict[str, Any]) -> None:
    # a Redis on 6379 or a Flower on 5555 already on the host must not stop the stack
    usual = {6379, 26379, 5555, 8089, 8090, 8091, 9464, 8080, 8000}
    published = []
    for service in compose["services"].values():
        for port in service.get("ports", []):
            # 127.0.0.1:HOST:CONTAINER, HOST either a number or ${VARIABLE:-number}
            host = re.fullmatch(r"127\.0\.0\.1:(?:\$\{\w+:-)?(\d+)\}?:\d+", port)
            assert host, port
            published.append(int(host.group(1)))
    assert published and not set(published) & usual and len(set(published)) == len(published), published
