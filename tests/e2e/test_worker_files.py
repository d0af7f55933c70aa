"""A worker leaves no file behind, whatever way it exits: a configuration error, SIGTERM, and
kill -9 (whose directory the next start removes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from producers.contract.settings import QueueConfig
from tests.support import wait_until, worker_env
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess, WorkerProcess
from worker.metrics import DIR_PREFIX, stale_dirs


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(DIR_PREFIX))


@pytest.mark.parametrize(
    ("names", "alive", "stale"),
    [
        ([f"{DIR_PREFIX}123-abcd"], set(), [f"{DIR_PREFIX}123-abcd"]),  # its worker is gone
        ([f"{DIR_PREFIX}123-abcd"], {123}, []),  # a living worker's
        ([f"{DIR_PREFIX}abcd", "other-123-x", f"{DIR_PREFIX}-x"], set(), []),  # not ours, or without a pid
    ],
)
def test_only_the_directories_of_dead_workers_are_stale(names: list[str], alive: set[int], stale: list[str]) -> None:
    assert stale_dirs(names, lambda pid: pid in alive) == stale


def test_a_configuration_error_leaves_nothing(tmp_path: Path, queue_config: QueueConfig) -> None:
    env = {**os.environ, **worker_env(queue_config, "http://127.0.0.1:9/identify"), "TMPDIR": str(tmp_path)}
    del env["AMPLITUDE_API_KEY"]
    done = subprocess.run([*COMMAND, "worker"], env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert leftovers(tmp_path) == []


def test_sigterm_leaves_nothing_and_kill_9_is_cleaned_by_the_next_start(
    tmp_path: Path, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess
) -> None:
    env = {**worker_env(queue_config, amplitude.identify_url), "TMPDIR": str(tmp_path)}
    worker = WorkerProcess(env, name="files-a", concurrency=1, log_path=tmp_path / "a.log").start()
    try:
        wait_until(lambda: leftovers(tmp_path), 30, "the worker's metrics directory")
        wait_until(lambda: b"ready" in (tmp_path / "a.log").read_bytes(), 60, "the worker to be ready")
        assert worker.terminate() == 0
    finally:
        worker.stop()
    assert leftovers(tmp_path) == []

    killed = WorkerProcess(env, name="files-b", concurrency=1, log_path=tmp_path / "b.log").start()
    try:
        wait_until(lambda: leftovers(tmp_path), 30, "the worker's metrics directory")
        killed.kill()
    finally:
        killed.stop()
    [left] = leftovers(tmp_path)  # kill -9 runs no clean-up
    # the next start removes it, even one that stops at once on a configuration error
    start = {**os.environ, **env}
    del start["AMPLITUDE_API_KEY"]
    subprocess.run([*COMMAND, "worker"], env=start, capture_output=True, timeout=60, check=False)
    assert left not in leftovers(tmp_path) and leftovers(tmp_path) == []


def test_celery_does_not_warn_at_each_reconnect_of_a_setting_that_changes_nothing_here(
    queue_config: QueueConfig,
) -> None:
    from worker.celery_app import create_app
    from worker.settings import Settings

    app = create_app(Settings.from_env(worker_env(queue_config, "http://127.0.0.1:9/identify")))
    # the setting Celery's CPendingDeprecationWarning asks for is set; it acts on late-acked tasks only
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is True
    assert app.conf.task_acks_late is False
