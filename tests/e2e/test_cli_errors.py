"""No traceback reaches a user: every command, run as users run it, with bad settings and inputs.

Each case is a real `identify-queue` process; it must write exactly one line on stderr, no
"Traceback", and exit with the documented code (worker/cli/common.py).  The processes of the table
run a few at a time, each bounded by a timeout.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import COMMAND

TOKEN = "cli-errors-token-0123456789"  # noqa: S105 (a test's token)
COMMANDS: list[list[str]] = [
    ["enqueue", "--user-id", "user-00001"], ["import", "{ok_jsonl}"], ["status"], ["dlq", "list"],
    ["dlq", "export"], ["dlq", "replay", "--all"], ["dlq", "purge", "--all", "--yes"], ["acl"],
    ["serve", "--port", "0"], ["worker"], ["demo", "--users", "1", "--updates", "1"],
]  # fmt: skip


class Case(NamedTuple):
    args: list[str]
    env: dict[str, str]
    code: int
    says: str


def cases(redis_url: str, http_port: int, busy_port: int) -> list[Case]:
    table: list[Case] = []
    for args in COMMANDS:
        table.append(Case(args, {"REDIS_URL": "redis://127.0.0.1:notaport/0"}, 2, "REDIS_URL has a port"))
    for args in COMMANDS[:4] + COMMANDS[9:10]:
        table.append(Case(args, {"REDIS_URL": "redis://127.0.0.1:70000/0"}, 2, "REDIS_URL has a port"))
    for args in [*COMMANDS[:6], COMMANDS[9]]:
        table.append(Case(args, {"REDIS_URL": f"redis://127.0.0.1:{http_port}/0"}, 4, "does not speak Redis"))
    ok = {"REDIS_URL": redis_url}
    table += [
        Case(["import", "{cr_csv}"], ok, 1, "CR-only line endings"),
        Case(["import", "{cr_csv}"], ok, 1, "CR-only line endings"),  # no job record left to block it
        Case(["import", "{cr_csv}", "--resume"], ok, 1, "CR-only line endings"),
        Case(["import", sys.executable, "--format", "csv"], ok, 1, "NUL bytes"),
        Case(["import", sys.executable, "--format", "csv"], ok, 1, "NUL bytes"),
        Case(["import", "{ok_jsonl}", "--rejects", "/nonexistent/rejects.jsonl"], ok, 2, "--rejects"),
        Case(["import", "/nonexistent.jsonl"], ok, 2, "cannot read"),
        Case(["import", "{ok_csv}", "--type", "agee=int"], ok, 2, "--type"),
        Case(["enqueue", "--json", "[1]"], ok, 2, "must be a JSON object"),
        Case(["import", "{ok_jsonl}", "--progress", "loud"], ok, 2, "--progress"),
        Case(["status", "--nosuch"], ok, 2, "--nosuch"),
        Case(["local-amplitude", "--port", str(busy_port)], ok, 2, "cannot listen"),
        Case(["serve", "--port", str(busy_port)], ok, 2, "cannot listen"),
        Case(["status"], {**ok, "IDENTIFY_SHARDS": "many"}, 2, "IDENTIFY_SHARDS"),
        Case(["worker"], {**ok, "AMPLITUDE_API_KEY": ""}, 2, "AMPLITUDE_API_KEY"),
    ]
    return table


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a Redis client's bad request is this server's only traffic


@pytest.fixture
def http_port() -> Iterator[int]:
    """An HTTP server on loopback, where a REDIS_URL may point by mistake; it answers at once."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ok.jsonl").write_text('{"user_id": "user-00001"}\n')
    (tmp_path / "ok.csv").write_text("user_id,age\nuser-00001,7\n")
    (tmp_path / "cr.csv").write_bytes(b"user_id,plan\ruser-00001,pro\ruser-00002,free\r")
    return {f"{p.stem}_{p.suffix[1:]}": str(p) for p in tmp_path.iterdir()}


def run(case: Case, base: dict[str, str], inputs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [a.format(**inputs) for a in case.args]
    return subprocess.run([*COMMAND, *args], env={**base, **case.env}, capture_output=True, text=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL)  # fmt: skip


def test_every_command_answers_bad_settings_and_inputs_with_one_line_and_its_exit_code(
    redis_server: LocalRedis, http_port: int, namespace: str, inputs: dict[str, str]
) -> None:  # fmt: skip
    busy_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    base = {**os.environ, "IDENTIFY_NAMESPACE": namespace, "AMPLITUDE_API_KEY": "key-for-a-test",
            "IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_METRICS_PORT": "0"}  # fmt: skip
    table = cases(redis_server.url, http_port, busy_port)
    # The runs on the same input (the CR-only CSV twice, then with --resume) must run in order.
    serial = [c for c in table if "{cr_csv}" in c.args or sys.executable in c.args]
    parallel = [c for c in table if c not in serial]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: (c, run(c, base, inputs)), parallel))
    results += [(c, run(c, base, inputs)) for c in serial]
    failures = []
    for case, done in results:
        one_line = len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        if done.returncode != case.code or not one_line or case.says not in done.stderr:
            failures.append(f"{case.args} {case.env}: exit {done.returncode}, stderr {done.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
