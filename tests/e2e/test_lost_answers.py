"""A worker whose path to Redis loses answers: each of its scripts' calls may run in Redis and
then lose its answer with its connection (a proxy on loopback closes it), as a network path or a
proxy dropping connections does.  The unit of the fault is tests/drain/test_lost_answers.py; this
is the whole worker (drains, dispatcher, leases, budget) meeting it at random."""

from __future__ import annotations

from importlib.resources import files

from producers.contract.scripts import source
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import (
    AnswerDroppingProxy,
    StartWorker,
    check_delivery,
    drained,
    seq_records,
    status,
    wait_until,
)
from worker.devtools.local_stack import LocalAmplitudeProcess


def test_a_worker_that_loses_a_tenth_of_its_scripts_answers_delivers_everything_once_in_order(
    producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
    start_worker: StartWorker, proxy: AnswerDroppingProxy,
) -> None:  # fmt: skip
    # Given 2,000 updates of 100 users, and a worker whose every script call (claims, settles,
    # leases, the budget, the dispatcher's) loses its answer one time in ten, after it ran
    users, per_user = 100, 20
    producer.identify_many(seq_records(users, per_user))
    # Every script is loaded first: a lost NOSCRIPT answer is of a call that did not run, and a
    # settle that did not run after a delivery sends its batch again (at least once, allowed);
    # here every lost answer is of a call that ran, so nothing may arrive twice
    for package in ("worker", "producers"):  # the worker runs wake.lua of the producers' too
        for path in files(package).joinpath("lua").iterdir():
            if path.name.endswith(".lua"):
                producer.client.script_load(source(package, path.name.removesuffix(".lua")))
    proxy.drop_answers(b"EVALSHA", 0.1, seed=7)
    start_worker(
        REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", IDENTIFY_BROKER_URL=queue_config.redis_url,
        IDENTIFY_BATCH_SIZE="50", IDENTIFY_RETRY_BACKOFF_BASE_S="0.05", IDENTIFY_RETRY_BACKOFF_CAP_S="0.2",
    )  # fmt: skip
    wait_until(lambda: drained(queue_config), 120, "every update delivered")
    proxy.stop_dropping()
    # Then every update arrived once, each user's in order, and the counts agree
    assert proxy.dropped >= 10
    assert check_delivery(amplitude.accepted(), users, per_user) == 0
    shown = status(queue_config)
    assert (shown["queued"], shown["delivered"], shown["dead_letter"]) == (0, users * per_user, 0)
