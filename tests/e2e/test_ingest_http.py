"""The ingest endpoint as users run it: `identify-queue serve` in its own process, real Redis, HTTP.

One server serves most tests of this module (its keys are deleted before each test); the tests that
need other settings start their own.
"""

from __future__ import annotations

import http.client
import secrets
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
import redis
import requests
from click.testing import CliRunner

from producers.contract.entry import decode
from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import check_delivery, seq_records, total_of, wait_until, worker_env
from worker.cli.main import main
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_redis import LocalRedis
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess, WorkerProcess

TOKEN = "ingest-" + secrets.token_urlsafe(18)
WRONG = "wrong-" + secrets.token_urlsafe(18)
TIMEOUT = 10


def server_env(config: QueueConfig, **extra: str) -> dict[str, str]:
    env = {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace, "IDENTIFY_SHARDS": str(config.shards),
           "IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_LOG_LEVEL": "debug"}  # fmt: skip
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def shared_server(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestProcess]:
    config = QueueConfig(redis_url=redis_server.url, namespace=f"ingest-{secrets.token_hex(4)}", shards=8)
    log = tmp_path_factory.mktemp("ingest") / "serve.log"
    with IngestProcess(server_env(config), log_path=log) as server:
        server.config = config  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def server(shared_server: IngestProcess, redis_client: redis.Redis) -> IngestProcess:
    """The module's server, with its queue emptied."""
    keys = list(redis_client.scan_iter(match=Keys(config_of(shared_server).namespace).pattern(), count=1000))
    if keys:
        redis_client.delete(*keys)
    return shared_server


def config_of(server: IngestProcess) -> QueueConfig:
    config: QueueConfig = server.config  # type: ignore[attr-defined]
    return config


def post_form(server: IngestProcess, identification: Any, api_key: str | None = TOKEN, **kw: Any) -> requests.Response:
    # api_key first, as Amplitude clients send it
    fields = {} if api_key is None else {"api_key": api_key}
    text = identification if isinstance(identification, str) else orjson.dumps(identification).decode()
    fields["identification"] = text
    return requests.post(server.identify_url, data=fields, timeout=TIMEOUT, **kw)


def queued(client: redis.Redis, config: QueueConfig) -> list[dict[str, Any]]:
    """Every queued record, shard by shard (each user's in its order)."""
    keys = Keys(config.namespace)
    raws = [e for s in range(config.shards) for e in client.lrange(keys.shard(s).queue, 0, -1)]
    return [orjson.loads(decode(r).data) for r in raws]


def queued_total(client: redis.Redis, config: QueueConfig) -> int:
    return total_of(client, Keys(config.namespace), config.shards)


def update(seq: int, user: str = "user-00001") -> dict[str, Any]:
    return {"user_id": user, "user_properties": {"$set": {"seq": seq}}}


def test_every_body_format_lands_in_redis_in_order(server: IngestProcess, redis_client: redis.Redis) -> None:
    # Given one user's updates 0..8, sent in every format the endpoint reads
    answers = [
        post_form(server, [update(0), update(1), update(2)]),
        post_form(server, update(3)),
        requests.post(server.identify_url, json={"api_key": TOKEN, "identification": [update(4), update(5)]},
                      timeout=TIMEOUT),
        requests.post(server.identify_url, json={"api_key": TOKEN, "identification": update(6)}, timeout=TIMEOUT),
        requests.post(server.identify_url, files={"api_key": (None, TOKEN),
                                                  "identification": (None, orjson.dumps([update(7)]))},
                      timeout=TIMEOUT),
        post_form(server, [update(8)], api_key=None, headers={"Authorization": f"Bearer {TOKEN}"}),
    ]  # fmt: skip
    # Then each was answered 200 Amplitude-style once queued, and Redis holds them in order
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
    assert [a.json()["events_ingested"] for a in answers] == [3, 1, 2, 1, 1, 1]
    assert all(a.json()["code"] == 200 and a.json()["server_upload_time"] > 0 for a in answers)
    assert queued(redis_client, config_of(server)) == [update(i) for i in range(9)]
    assert queued_total(redis_client, config_of(server)) == 9


def test_invalid_records_are_named_and_nothing_is_enqueued(server: IngestProcess, redis_client: redis.Redis) -> None:
    # Given a batch with two bad records among good ones
    batch = [update(0), {"user_id": "undefined"}, update(1), {"device_id": "device-001", "user_properties": {"$add":
             {"n": "x"}}}, update(2)]  # fmt: skip
    # When it is posted
    answer = post_form(server, batch)
    # Then the answer names both, Amplitude-style and with reasons, and nothing of the batch is queued
    assert answer.status_code == 400
    body = answer.json()
    assert body["events_with_invalid_fields"] == {"user_id": [1], "user_properties": [3]}
    assert [(e["index"], e["field"], e["rule"]) for e in body["invalid_identifications"]] == [
        (1, "user_id", "reserved_id"), (3, "user_properties.$add.n", "not_number"),
    ]  # fmt: skip
    assert queued_total(redis_client, config_of(server)) == 0
    assert queued(redis_client, config_of(server)) == []


MALFORMED = [
    ("identification not JSON", {"api_key": TOKEN, "identification": "{nope"}, None, 400,
     "identification is not valid JSON"),
    ("no identification", {"api_key": TOKEN}, None, 400, "Request missing required field"),
    ("empty body", b"", None, 401, "Request missing required field"),
    ("JSON body not JSON", b"{", "application/json", 400, "the body is not valid JSON"),
    ("JSON body without identification", orjson.dumps({"api_key": TOKEN}), "application/json", 400,
     "Request missing required field"),
    ("text/plain", b"hello", "text/plain", 415, "Content-Type 'text/plain' is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "error"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])  # fmt: skip
def test_malformed_requests_get_a_clear_message(server: IngestProcess, redis_client: redis.Redis, body: Any,
                                                content_type: str | None, status: int, error: str) -> None:  # fmt: skip
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(server.identify_url, data=body, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == status
    assert answer.json()["code"] == status
    assert error in answer.json()["error"]
    assert queued_total(redis_client, config_of(server)) == 0


def test_oversized_requests_are_refused_by_bytes_and_by_count(server: IngestProcess, redis_client: redis.Redis) -> None:
    # Over 1 MB: Amplitude's 413, from the application
    big = {"api_key": TOKEN, "identification": orjson.dumps([update(0)]).decode(), "pad": "x" * 1_000_000}
    answer = requests.post(server.identify_url, data=big, timeout=TIMEOUT)
    assert answer.status_code == 413
    assert answer.json()["error"].startswith("Payload too large: 1000")
    assert answer.json()["error"].endswith(" bytes, at most 1000000 per request")
    # Far over it: waitress refuses it itself from the headers, before any of the body is sent
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT)
    conn.putrequest("POST", "/identify")
    conn.putheader("Content-Length", "2000001")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    # 2,001 small identifications: 413 by count; 2,000 are fine
    many = [update(i, f"user-{i:05d}") for i in range(2001)]
    answer = post_form(server, many)
    assert answer.status_code == 413
    assert answer.json() == {"code": 413, "error": "Payload too large: 2001 identifications, at most 2000 per request"}
    assert queued_total(redis_client, config_of(server)) == 0
    assert post_form(server, many[:2000]).json()["events_ingested"] == 2000
    assert queued_total(redis_client, config_of(server)) == 2000


def test_credentials_are_checked_and_the_token_never_printed(server: IngestProcess, redis_client: redis.Redis) -> None:
    # No token: 401 asking for one
    missing = post_form(server, update(0), api_key=None)
    assert missing.status_code == 401
    assert missing.json() == {"code": 401, "error": "Request missing required field", "missing_field": "api_key"}
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    # A wrong token, in the body or the header: 403, and the answer does not echo it
    for answer in (post_form(server, update(0), api_key=WRONG),
                   post_form(server, update(0), headers={"Authorization": f"Bearer {WRONG}"})):  # fmt: skip
        assert answer.status_code == 403
        assert answer.json()["code"] == 403
        assert WRONG not in answer.text and TOKEN not in answer.text
    assert queued_total(redis_client, config_of(server)) == 0
    # The right one in the header works
    assert post_form(server, update(0), api_key=None, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    # The server logged each refusal, and neither token
    output = wait_until(lambda: (o := server.output()).count(" 403 from ") >= 2 and o, 10, "the refusals logged")
    assert " 401 from 127.0.0.1" in output
    assert TOKEN not in output and WRONG not in output


def test_concurrent_clients_keep_each_users_order(server: IngestProcess, redis_client: redis.Redis) -> None:
    # Given six clients, each sending its own user's updates 0..29 in requests of 3
    def client(user: str) -> None:
        with requests.Session() as session:
            for start in range(0, 30, 3):
                body = {
                    "api_key": TOKEN,
                    "identification": orjson.dumps([update(i, user) for i in range(start, start + 3)]),
                }
                assert session.post(server.identify_url, data=body, timeout=TIMEOUT).status_code == 200

    users = [f"user-{n:05d}" for n in range(6)]
    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then every record is queued once, each user's in the order sent
    records = queued(redis_client, config_of(server))
    assert len(records) == 180
    for user in users:
        assert [r["user_properties"]["$set"]["seq"] for r in records if r["user_id"] == user] == list(range(30))


def test_health_and_unknown_paths(server: IngestProcess) -> None:
    health = requests.get(server.health_url, timeout=TIMEOUT)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert requests.get(server.identify_url, timeout=TIMEOUT).status_code == 405
    assert requests.post(server.url + "/2/httpapi", timeout=TIMEOUT).status_code == 404


def test_full_queue_answers_503_with_retry_after(redis_server: LocalRedis, tmp_path: Path) -> None:
    # Given an endpoint whose queue takes 5 records
    config = QueueConfig(redis_url=redis_server.url, namespace=f"t-{secrets.token_hex(4)}", shards=8)
    env = server_env(config, IDENTIFY_MAX_QUEUED="5", IDENTIFY_INGEST_RETRY_AFTER_S="7")
    with IngestProcess(env, log_path=tmp_path / "serve.log") as server:
        assert post_form(server, [update(0), update(1), update(2)]).status_code == 200
        # When a request would pass the cap
        full = post_form(server, [update(3), update(4), update(5)])
        # Then it is refused whole, with Retry-After, and a request that fits still goes in
        assert full.status_code == 503
        assert full.headers["Retry-After"] == "7"
        assert full.json()["error"] == "Queue full (3 of 5 records queued): nothing was enqueued, retry later"
        assert post_form(server, [update(3), update(4)]).status_code == 200
        client = redis.Redis.from_url(config.redis_url)
        assert queued(client, config) == [update(i) for i in range(5)]
        client.close()


def test_redis_down_is_503_and_unhealthy(tmp_path: Path) -> None:
    # Given an endpoint on its own Redis
    with LocalRedis() as private:
        config = QueueConfig(redis_url=private.url, namespace="t-down")
        with IngestProcess(server_env(config), log_path=tmp_path / "serve.log") as server:
            assert requests.get(server.health_url, timeout=TIMEOUT).status_code == 200
            # When Redis goes away
            private.stop()
            # Then requests are refused as retryable and health says so
            answer = post_form(server, update(0))
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "10"
            assert "Queue unavailable" in answer.json()["error"]
            health = requests.get(server.health_url, timeout=TIMEOUT)
            assert (health.status_code, health.json()["status"]) == (503, "unavailable")


def test_refuses_to_start_without_a_token_unless_told(redis_server: LocalRedis, tmp_path: Path) -> None:
    config = QueueConfig(redis_url=redis_server.url, namespace=f"t-{secrets.token_hex(4)}")
    env = {k: v for k, v in server_env(config).items() if k != "IDENTIFY_INGEST_TOKEN"}
    refused = subprocess.run([*COMMAND, "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=30,
                             check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "IDENTIFY_INGEST_TOKEN is not set" in refused.stderr
    both = subprocess.run([*COMMAND, "serve", "--port", "0", "--insecure-no-auth"], env=server_env(config),
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert both.returncode == 2
    assert "--insecure-no-auth and IDENTIFY_INGEST_TOKEN are both given" in both.stderr
    assert TOKEN not in both.stderr
    # With the flag it serves without credentials, says so loudly, and stops cleanly on SIGTERM
    server = IngestProcess(env, args=["--insecure-no-auth"], log_path=tmp_path / "serve.log").start()
    try:
        assert post_form(server, update(0), api_key=None).status_code == 200
        assert "WARNING identify_queue.ingest: --insecure-no-auth: anyone who can reach" in server.output()
    finally:
        assert server.stop() == 0
    assert "ingest endpoint stopped" in server.output()


def test_address_in_use_is_a_configuration_error(shared_server: IngestProcess) -> None:
    port = shared_server.url.rsplit(":", 1)[1]
    env = server_env(config_of(shared_server))
    result = subprocess.run([*COMMAND, "serve", "--port", port], env=env, capture_output=True, text=True, timeout=30,
                            check=False)  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_help_explains_the_endpoint() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for words in ("POST /identify", "--insecure-no-auth", "IDENTIFY_INGEST_TOKEN", "0.0.0.0", "Retry-After", "413"):
        assert words in result.output


def test_end_to_end_a_worker_delivers_what_the_endpoint_accepted(
    server: IngestProcess, amplitude: LocalAmplitudeProcess, tmp_path: Path
) -> None:
    # Given 50 users' updates posted to the endpoint, 100 per request, as a service would
    users, per_user = 50, 6
    records = seq_records(users, per_user)
    for start in range(0, len(records), 100):
        body = urlencode({"api_key": TOKEN, "identification": orjson.dumps(records[start : start + 100]).decode()})
        answer = requests.post(server.identify_url, data=body, timeout=TIMEOUT,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert answer.status_code == 200
    # When a worker drains the queue to the local Amplitude
    worker = WorkerProcess(worker_env(config_of(server), amplitude.identify_url), name=f"ingest-{secrets.token_hex(2)}",
                           concurrency=1, log_path=tmp_path / "worker.log").start()  # fmt: skip
    try:
        wait_until(lambda: amplitude.stats()["accepted"] >= users * per_user, 60, "delivery")
    finally:
        worker.stop()
    # Then every record arrived once, each user's in order
    accepted = amplitude.accepted()
    assert len(accepted) == users * per_user
    assert check_delivery(accepted, users, per_user) == 0


def test_an_amplitude_client_pointed_at_the_endpoint_works_unchanged(
    server: IngestProcess, producer: IdentifyProducer, queue_config: QueueConfig, redis_client: redis.Redis,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Given another queue's records, some with what form encoding must escape, and that queue's
    # worker (our own Amplitude client) sending to the endpoint, with the ingest token as its API key
    tricky = [{"user_id": "user-99999", "user_properties": {"$set": {"seq": i, "note": text}}}
              for i, text in enumerate(["a&b=c+d", "100% %25 #x; ?", "héllo wörld ☃", '"quoted" {x:[1]}'])]  # fmt: skip
    producer.identify_many(seq_records(20, 5) + tricky)
    env = worker_env(queue_config, server.identify_url, AMPLITUDE_API_KEY=TOKEN)
    worker = WorkerProcess(
        env, name=f"relay-{secrets.token_hex(2)}", concurrency=1, log_path=tmp_path / "w.log"
    ).start()
    try:
        # When it drains its queue
        wait_until(lambda: queued_total(redis_client, config_of(server)) >= 104, 60, "the relayed records")
    finally:
        worker.stop()
    # Then the endpoint's queue holds every record exactly as enqueued, each user's in order
    relayed = queued(redis_client, config_of(server))
    assert len(relayed) == 104
    assert [r for r in relayed if r["user_id"] == "user-99999"] == tricky
    assert check_delivery([r for r in relayed if r["user_id"] != "user-99999"], 20, 5) == 0
