"""A dead-lettered update is not skipped by the next night's `import --skip-unchanged`."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from producers.contract.entry import shard_of
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from tests.support import StartWorker, drained, status, wait_until
from worker.cli.main import main
from worker.devtools.local_stack import LocalAmplitudeProcess


def test_a_dead_lettered_users_fingerprint_is_cleared(
    queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker, tmp_path: Path,
    redis_client,  # type: ignore[no-untyped-def]
) -> None:  # fmt: skip
    export = tmp_path / "users.jsonl"
    export.write_bytes(b"".join(
        orjson.dumps({"user_id": f"user-{i:05d}", "user_properties": {"plan": "pro"}}) + b"\n" for i in range(20)
    ))  # fmt: skip
    env = {"REDIS_URL": queue_config.redis_url, "IDENTIFY_NAMESPACE": queue_config.namespace,
           "IDENTIFY_SHARDS": str(queue_config.shards)}  # fmt: skip

    def nightly_import() -> int:
        result = CliRunner().invoke(main, ["import", str(export), "--skip-unchanged", "--restart", "--job", "nightly"],
                                    env=env, catch_exceptions=False)  # fmt: skip
        assert result.exit_code == 0, result.output
        return int(result.stdout.split(" enqueued")[0].rsplit("\n", 1)[-1])

    # Night one: everything is sent, and Amplitude refuses user-00007's update
    amplitude.control(reject_users=["user-00007"])
    assert nightly_import() == 20
    start_worker()
    wait_until(lambda: drained(queue_config), 30, "night one delivered")
    assert status(queue_config)["dead_letter"] == 1
    keys = Keys(queue_config.namespace)

    def fingerprint(user: str) -> str:
        return keys.shard(shard_of(f"u:{user}", queue_config.shards)).fingerprint(f"u:{user}")

    assert not redis_client.exists(fingerprint("user-00007"))
    assert redis_client.exists(fingerprint("user-00008"))
    # Night two, same export: only the update that failed is sent again
    amplitude.control()
    assert nightly_import() == 1
    wait_until(lambda: drained(queue_config), 30, "night two delivered")
    assert [r["user_id"] for r in amplitude.accepted()][-1] == "user-00007"
