"""What an import tells and leaves behind at its edges: Ctrl-C (a real SIGINT to a real process),
a mistyped flag on a finished job, a byte order mark, keys given twice (import, enqueue, serve)."""

from __future__ import annotations

import gzip
import os
import shlex
import subprocess
from pathlib import Path

import orjson
import pytest
import redis
import requests
from click.testing import CliRunner

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.importer.job import JobStore
from tests.support import interrupt, running, total_of, wait_until
from worker.cli.main import main
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_stack import COMMAND


def env_for(config: QueueConfig, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace,
            "IDENTIFY_SHARDS": str(config.shards), **extra}  # fmt: skip


def cli(config: QueueConfig, *args: str, **extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env_for(config, **extra))
    return result.exit_code, result.stdout, result.stderr


def test_ctrl_c_stops_an_import_with_130_where_it_stopped_and_the_command_to_go_on(
    queue_config: QueueConfig, redis_client: redis.Redis, tmp_path: Path
) -> None:  # fmt: skip
    path = tmp_path / "users.jsonl"
    path.write_bytes(b"".join(b'{"user_id":"user-%05d"}\n' % i for i in range(1000)))
    log = tmp_path / "import.err"
    # A queue capped at 300 holds the import at a known place (line 300) until it is interrupted.
    env = {**os.environ, **env_for(queue_config, IDENTIFY_MAX_QUEUED="300")}
    with running([*COMMAND, "import", str(path), "--chunk-size", "100", "--progress", "none"], env, log) as process:
        wait_until(lambda: b"waiting for the workers to make room" in log.read_bytes(), timeout=30,
                   what="the import to wait on the full queue")  # fmt: skip
        code = interrupt(process)
    last = log.read_text().splitlines()[-1]
    assert code == 130, log.read_text()
    assert "Traceback" not in log.read_text() and "Aborted" not in log.read_text()
    assert last.startswith("identify-queue: interrupted at line 300 (300 enqueued, 0 rejected), recorded in job ")
    command = last.split("go on with: ", 1)[1]
    assert command == shlex.join(["identify-queue", "import", str(path), "--progress", "none", "--chunk-size", "100",
                                  "--resume"])  # fmt: skip
    # The command, as printed, finishes the job: every line enqueued once.
    done = subprocess.run([*COMMAND, *shlex.split(command)[1:]], env={**os.environ, **env_for(queue_config)},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resumed after line 300, 700 lines this run" in done.stdout
    assert total_of(redis_client, Keys(queue_config.namespace), queue_config.shards) == 1000


def test_a_mistyped_flag_is_refused_before_the_job_record_is_read_or_changed(
    queue_config: QueueConfig, redis_client: redis.Redis, tmp_path: Path
) -> None:  # fmt: skip
    path = tmp_path / "users.csv"
    path.write_text("user_id,age\nuser-00001,7\n")
    assert cli(queue_config, "import", str(path), "--job", "nightly", "--type", "age=int")[0] == 0
    jobs = JobStore(redis_client, Keys(queue_config.namespace), queue_config.shards)
    before = jobs.read("nightly")
    assert before is not None and before.finished
    code, _, err = cli(queue_config, "import", str(path), "--job", "nightly", "--type", "agee=int")
    assert code == 2 and "--type" in err and "agee" in err
    assert "starting over" not in err
    assert jobs.read("nightly") == before


@pytest.mark.parametrize("kind", ["file", "gzip", "stdin"])
def test_a_byte_order_mark_at_the_start_of_json_lines_is_skipped(queue_config: QueueConfig, tmp_path: Path,
                                                                 kind: str) -> None:  # fmt: skip
    data = b'\xef\xbb\xbf{"user_id":"user-00001"}\n{"user_id":"user-00002"}\n'
    path = tmp_path / ("bom.jsonl.gz" if kind == "gzip" else "bom.jsonl")
    path.write_bytes(gzip.compress(data) if kind == "gzip" else data)
    if kind == "stdin":
        result = CliRunner().invoke(main, ["import", "-"], env=env_for(queue_config), input=data)
        code, out = result.exit_code, result.stdout
    else:
        code, out, err = cli(queue_config, "import", str(path))
        assert err == ""
    assert code == 0
    assert out.startswith("2 enqueued, 0 rejected")


def test_a_key_given_twice_is_refused_naming_the_line_and_the_key(queue_config: QueueConfig, tmp_path: Path) -> None:
    path = tmp_path / "twice.jsonl"
    path.write_bytes(b'{"user_id":"user-00001"}\n{"user_id":"user-00002","user_id":"user-00003"}\n'
                     b'{"user_id":"user-00004","user_properties":{"$set":{"plan":"a","plan":"b"}}}\n'
                     b'{"user_id":"user-00005","user_properties":{"$set":{"say":"\\"x\\":1"}}}\n')  # fmt: skip
    code, out, err = cli(queue_config, "import", str(path))
    assert code == 1 and out.startswith("2 enqueued, 2 rejected")
    assert "line 2: user_id: key 'user_id' appears twice" in err
    assert "line 3: user_properties.$set.plan: key 'plan' appears twice" in err
    code, out, err = cli(queue_config, "enqueue", "--json", '{"user_id": "user-00001", "user_id": "user-00002"}')
    assert code == 1 and "key 'user_id' appears twice" in err


@pytest.mark.parametrize("as_json", [False, True])
def test_serve_refuses_a_key_given_twice(queue_config: QueueConfig, tmp_path: Path, as_json: bool) -> None:
    token = "twice-token-0123456789"  # noqa: S105 (a test's token)
    text = '[{"user_id":"user-00001"},{"user_id":"user-00002","user_properties":{"$set":{"a":1,"a":2}}}]'
    with IngestProcess(env_for(queue_config, IDENTIFY_INGEST_TOKEN=token), log_path=tmp_path / "s.log") as server:
        if as_json:
            body = orjson.dumps({"api_key": token, "identification": orjson.Fragment(text)})
            answer = requests.post(server.identify_url, data=body, headers={"Content-Type": "application/json"},
                                   timeout=10)  # fmt: skip
        else:
            answer = requests.post(server.identify_url, data={"api_key": token, "identification": text}, timeout=10)
    assert answer.status_code == 400
    assert orjson.loads(answer.content)["error"] == (
        "Invalid request: key 'a' appears twice in identification[1].user_properties.$set (JSON would keep only the "
        "last value)"
    )
