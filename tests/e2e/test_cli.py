"""The identify-queue command: a stable interface others script against."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from producers.contract.entry import decode
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from worker.cli.main import main


@pytest.fixture
def run(queue_config: QueueConfig):  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": queue_config.redis_url, "IDENTIFY_NAMESPACE": queue_config.namespace,
           "IDENTIFY_SHARDS": str(queue_config.shards)}  # fmt: skip

    def invoke(*args: str, input: str | None = None, **extra: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args), env={**env, **extra}, input=input, catch_exceptions=False)

    return invoke


def queued(redis_client, config: QueueConfig) -> list[dict]:  # type: ignore[no-untyped-def]
    keys = Keys(config.namespace)
    raws = [e for s in range(config.shards) for e in redis_client.lrange(keys.shard(s).queue, 0, -1)]
    return [orjson.loads(decode(r).data) for r in raws]


def test_import_enqueues_valid_lines_and_reports_each_rejected_one(run, tmp_path: Path, redis_client,
                                                                   queue_config: QueueConfig) -> None:  # fmt: skip
    path = tmp_path / "users.jsonl"
    path.write_text(
        '{"user_id": "user-00001", "user_properties": {"plan": "pro"}}\n'
        '{"user_id": "usr"}\n'
        "\n"
        "not json\n"
        '{"device_id": "device-0002", "user_properties": {"$add": {"n": "x"}}}\n'
        '{"device_id": "device-0003"}\n'
    )
    result = run("import", str(path))
    assert result.exit_code == 1
    assert "line 2: user_id: must be at least 5 characters" in result.stderr
    assert "line 4: identification: not valid JSON" in result.stderr
    assert "line 5: user_properties.$add.n: $add needs a number" in result.stderr
    assert "2 enqueued, 3 rejected, 6 lines read" in result.stdout
    assert sorted(r.get("user_id") or r["device_id"] for r in queued(redis_client, queue_config)) == [
        "device-0003", "user-00001",
    ]  # fmt: skip


def test_import_reads_stdin_and_exits_zero_when_all_lines_are_good(run) -> None:
    lines = "".join(f'{{"user_id": "user-{i:05d}"}}\n' for i in range(2500))
    result = run("import", "-", input=lines)
    assert result.exit_code == 0, result.output
    assert "2,500 enqueued, 0 rejected" in result.stdout
    status = orjson.loads(run("status", "--json").stdout)
    assert status["queued"] == 2500


def test_enqueue_builds_a_record_from_flags(run, redis_client, queue_config: QueueConfig) -> None:
    result = run("enqueue", "--user-id", "user-00042", "--set", "plan=pro", "--set", "age=31", "--add", "logins=1",
                 "--unset", "trial", "--append", 'tags="a b"', "--field", "platform=iOS")  # fmt: skip
    assert result.exit_code == 0, result.output
    [record] = queued(redis_client, queue_config)
    assert record == {
        "user_id": "user-00042",
        "platform": "iOS",
        "user_properties": {"$set": {"plan": "pro", "age": 31}, "$add": {"logins": 1}, "$append": {"tags": "a b"},
                            "$unset": {"trial": "-"}},
    }  # fmt: skip


def test_enqueue_takes_json_and_names_the_bad_field(run) -> None:
    assert run("enqueue", "--json", '{"device_id": "device-000001", "paying": "yes"}').exit_code == 0
    result = run("enqueue", "--json", '{"user_id": "user-00001", "groups": {"a": 1}}')
    assert result.exit_code == 1
    assert "groups.a: group names must be strings" in result.stderr
    result = run("enqueue", "--add", "n=abc", "--user-id", "user-00001")
    assert result.exit_code == 2
    assert "--add" in result.output


def test_status_json_has_the_stable_fields(run) -> None:
    status = orjson.loads(run("status", "--json").stdout)
    for field in ("queued", "in_flight", "held", "deferred", "dead_letter"):
        assert isinstance(status[field], int)
    table = run("status").stdout
    assert "queued" in table and "dead letter" in table


def test_a_bad_setting_exits_2_and_names_the_variable(run) -> None:
    result = run("status", IDENTIFY_SHARDS="many")
    assert result.exit_code == 2
    assert "IDENTIFY_SHARDS must be an integer" in result.stderr


def test_an_unreachable_redis_exits_4(run) -> None:
    result = run("enqueue", "--user-id", "user-00001", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.exit_code == 4
    assert "Redis is unreachable" in result.stderr


def test_help_explains_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    for command in ("worker", "enqueue", "import", "status", "demo", "local-amplitude"):
        assert command in result.output
    assert "IDENTIFY_BATCH_SIZE" in result.output
