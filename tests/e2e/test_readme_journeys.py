"""The README's journeys, run from the README's own text.

Each test reads the code blocks of one journey in README.md and runs them as they are written
(only the HTTP ports are swapped for free ones) against the test's own redis-server and local
Amplitude-compatible server, then checks what reached Amplitude.  A journey whose commands stop
working, or a README that drifts from the commands, fails here.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from producers.contract.settings import QueueConfig
from tests.support import StartWorker, drained, status, wait_until, worker_env
from worker.devtools.local_redis import free_port
from worker.devtools.local_stack import LocalAmplitudeProcess

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent  # where the package's `identify-queue` command is installed

pytestmark = pytest.mark.timeout(180)


def blocks(journey: str, language: str) -> list[str]:
    """The fenced blocks of one README journey (a ``###`` section), in one language."""
    text = README.read_text()
    start = text.index(f"\n### {journey}\n")
    ends = [i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i != -1]
    section = text[start : min(ends)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def commands(block: str) -> list[str]:
    """A shell block's commands, continuation lines joined, comments left out."""
    joined = block.replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture
def shell_env(queue_config: QueueConfig, amplitude: LocalAmplitudeProcess) -> dict[str, str]:
    env = {**os.environ, **worker_env(queue_config, amplitude.identify_url)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(
    command: str, env: dict[str, str], cwd: Path, stdin: str | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, input=stdin, capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == code, f"{command}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def env_for_python(shell_env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(shell_env)
    yield
    os.environ.clear()
    os.environ.update(saved)


def arrived(amplitude: LocalAmplitudeProcess) -> dict[str, dict[str, Any]]:
    """Each user's properties as the local server holds them."""
    out: dict[str, dict[str, Any]] = {}
    for record in amplitude.accepted():
        props = out.setdefault(record["user_id"], {})
        for operation, values in record.get("user_properties", {}).items():
            for name, value in values.items():
                props[name] = props.get(name, 0) + value if operation == "$add" else value
    return out


def test_from_python_blocking_and_asyncio(
    env_for_python: None, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker
) -> None:
    blocking, asyncio_app = blocks("From Python", "python")
    # The blocking producer's lines, with `rows` from the caller's code
    rows = [{"user_id": f"user-{i:05d}", "user_properties": {"$set": {"n": i}}} for i in range(20)] + [{"user": 1}]
    scope: dict[str, Any] = {"rows": rows}
    exec(compile(blocking, "README.md (From Python)", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["report"].enqueued == 20 and len(scope["report"].rejected) == 1
    # The FastAPI example, served by uvicorn
    uvicorn = pytest.importorskip("uvicorn")
    app_scope: dict[str, Any] = {}
    exec(compile(asyncio_app, "README.md (asyncio)", "exec"), app_scope)  # noqa: S102 - the README's own code
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_scope["app"], host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn serving the README's app")
        base = f"http://127.0.0.1:{port}"
        assert requests.post(f"{base}/users/user-00777/plan", params={"plan": "team"}, timeout=10).json() == {
            "queued": True
        }
        refused = requests.post(f"{base}/users/u1/plan", params={"plan": "team"}, timeout=10)
        assert refused.status_code == 400 and "user_id" in refused.text
    finally:
        server.should_exit = True
        thread.join(30)
    # Then a worker delivers all of it
    start_worker()
    wait_until(lambda: drained(queue_config), 60, "the journey's updates delivered")
    users = arrived(amplitude)
    assert users["user-42"] == {"plan": "pro", "logins": 1}
    assert users["user-00777"] == {"plan": "team"}
    assert all(users[f"user-{i:05d}"] == {"n": i} for i in range(20))


def test_from_the_command_line(
    shell_env: dict[str, str], queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    enqueue, worker, show = commands(blocks("From the command line", "sh")[0])
    run(enqueue, shell_env, tmp_path)
    process = subprocess.Popen(["bash", "-c", f"exec {worker}"], env=shell_env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: drained(queue_config) and status(queue_config)["delivered"] == 1, 60, "delivery")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert "delivered" in run(show, shell_env, tmp_path).stdout
    [record] = amplitude.accepted()
    assert record["user_properties"] == {"$set": {"plan": "pro"}, "$add": {"logins": 1}}
    assert record["platform"] == "iOS"


def test_over_http(shell_env: dict[str, str], queue_config: QueueConfig, tmp_path: Path) -> None:
    port = free_port()
    lines = commands(blocks("Over HTTP, from any language", "sh")[0])
    script = []
    for written in lines:
        line = written.replace("127.0.0.1:8090", f"127.0.0.1:{port}")
        if line.startswith("identify-queue serve"):
            # in the background, and the next command once it answers
            script += [f"{line} --port {port} & SERVER=$!", "trap 'kill $SERVER; wait $SERVER' EXIT",
                       f"until curl -sf http://127.0.0.1:{port}/healthz >/dev/null; do sleep 0.05; done"]  # fmt: skip
        else:
            script.append(line)
    answer = run("\n".join(script), shell_env, tmp_path)
    assert orjson.loads(answer.stdout.strip().splitlines()[-1])["code"] == 200, answer.stdout
    assert status(queue_config)["queued"] == 1


def test_bulk_import(shell_env: dict[str, str], queue_config: QueueConfig, tmp_path: Path) -> None:
    with gzip.open(tmp_path / "users.jsonl.gz", "wb") as out:
        for i in range(50):
            out.write(orjson.dumps({"user_id": f"user-{i:05d}", "user_properties": {"$set": {"n": i}}}) + b"\n")
        out.write(b'{"user_id": "x"}\n')  # too short: a reject
    (tmp_path / "users.csv").write_text("uid,age,plan\n" + "".join(f"user-{i:05d},{20 + i},pro\n" for i in range(30)))
    first, second, resume = commands(blocks("Bulk import", "sh")[0])
    run(first, shell_env, tmp_path, code=1)  # 1: some input was rejected (written to the rejects file)
    assert len((tmp_path / "rejects.jsonl").read_text().splitlines()) == 1
    run(second, shell_env, tmp_path)
    run(resume, shell_env, tmp_path)  # the job had finished: nothing is enqueued twice
    assert status(queue_config)["queued"] == 80


def test_triage_of_failures(
    shell_env: dict[str, str], queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given updates Amplitude refuses (invalid) and updates that expired while it failed
    amplitude.control(reject_users=["user-00001"])
    run("identify-queue enqueue --user-id user-00001 --set plan=pro", shell_env, tmp_path)
    worker = start_worker()
    wait_until(lambda: status(queue_config)["dead_letter"] == 1, 60, "the refused update dead-lettered")
    amplitude.control(fail_rate=1.0)
    worker.terminate()
    run("identify-queue enqueue --user-id user-00002 --set plan=team", shell_env, tmp_path)
    start_worker(IDENTIFY_RETRY_MAX_AGE_S="1", IDENTIFY_RETRY_BACKOFF_BASE_S="0.1")
    wait_until(lambda: status(queue_config)["dead_letter"] == 2, 60, "the failing update expired")
    amplitude.control()
    # When the README's triage commands run
    show, listing, replay, purge = commands(blocks("Triage of failures", "sh")[0])
    assert "invalid" in run(show, shell_env, tmp_path).stdout
    assert "user-00001" in run(listing, shell_env, tmp_path).stdout
    run(replay, shell_env, tmp_path)
    run(purge, shell_env, tmp_path, stdin="y\n")
    # Then the expired update is delivered and the invalid one is gone
    wait_until(lambda: drained(queue_config) and status(queue_config)["dead_letter"] == 0, 60, "the replay")
    assert arrived(amplitude)["user-00002"] == {"plan": "team"}
    assert "user-00001" not in arrived(amplitude)
