"""What the tests share: waiting for a condition, building records, checking what arrived, reading
the queue's status, the settings of test workers, reading Redis back as plain values, and a
scripted Amplitude for the Drainer.  Fixtures are in conftest.py; no test module imports another."""

from __future__ import annotations

import random
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

import orjson
import redis

from producers.contract import entry
from producers.contract.connection import connect
from producers.contract.entry import shard_of
from producers.contract.keys import Keys, ShardKeys
from producers.contract.settings import QueueConfig
from worker.deadletter import DeadLetterQueue, Selection
from worker.devtools.local_stack import WorkerProcess
from worker.drain import waiting
from worker.drain.sink import HttpResult, form_body
from worker.errors import SinkError
from worker.status import gather

T = TypeVar("T")

#: The repository's root (the README, the compose file, the package to build).
ROOT = Path(__file__).resolve().parent.parent

#: The API key every test worker uses; tests look for it in logs and Redis and must not find it.
SENTINEL_API_KEY = "SENTINEL-KEY-7f3a9c1e5b"


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``.

    Tests synchronise on conditions (a count reached, a request in progress), never on sleeps;
    the short pause between polls only keeps the loop from spinning.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def running(command: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its stderr in ``log``; killed on the way out if it still runs."""
    with open(log, "wb") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def interrupt(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C, as a terminal sends it (SIGINT); the exit code the process then gives."""
    process.send_signal(signal.SIGINT)
    return process.wait(30)


def seq_records(users: int, per_user: int, prefix: str = "user") -> list[dict[str, Any]]:
    """``per_user`` numbered updates for each user, interleaved across users as services send them."""
    return [
        {"user_id": f"{prefix}-{u:05d}", "user_properties": {"$set": {"seq": i}}}
        for i in range(per_user)
        for u in range(users)
    ]


def by_user(accepted: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for record in accepted:
        out[record["user_id"]].append(record["user_properties"]["$set"]["seq"])
    return out


def check_delivery(accepted: list[dict[str, Any]], users: int, per_user: int, prefix: str = "user") -> int:
    """Every record arrived, each user's in enqueue order; returns how many arrived twice.

    A record sent again after a crash is a repeat of one already seen; once repeats are removed,
    each user's sequence must be exactly 0, 1, ..., per_user - 1.
    """
    duplicates = 0
    for user, seqs in by_user(accepted).items():
        seen: set[int] = set()
        first_time = []
        for s in seqs:
            if s in seen:
                duplicates += 1
            else:
                seen.add(s)
                first_time.append(s)
        assert first_time == list(range(per_user)), f"{user} received {seqs}"
    assert len(by_user(accepted)) == users, f"{len(by_user(accepted))} users received updates, expected {users}"
    return duplicates


def redis_holds(client: Any, pattern: str, needle: bytes) -> list[bytes]:
    """The keys matching ``pattern`` whose name or any value contains ``needle``.

    Values are read by type (DUMP output is compressed and could hide the needle).
    """
    found = []
    for key in client.scan_iter(pattern):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        else:
            values = [repr(client.xrange(key)).encode()] if kind == "stream" else []
        if needle in key or any(needle in (v or b"") for v in values):
            found.append(key)
    return found


#: Starts `identify-queue worker` processes for a test (the `start_worker` fixture).
StartWorker = Callable[..., WorkerProcess]


def worker_env(queue_config: QueueConfig, identify_url: str, **overrides: str) -> dict[str, str]:
    """Settings for test workers: short timeouts and leases, so that faults resolve in seconds."""
    env = {
        "REDIS_URL": queue_config.redis_url,
        "IDENTIFY_NAMESPACE": queue_config.namespace,
        "IDENTIFY_SHARDS": str(queue_config.shards),
        "AMPLITUDE_API_KEY": SENTINEL_API_KEY,
        "AMPLITUDE_IDENTIFY_URL": identify_url,
        "IDENTIFY_BATCH_LINGER_MS": "20",
        "IDENTIFY_HTTP_CONNECT_TIMEOUT_S": "0.5",
        "IDENTIFY_HTTP_TIMEOUT_S": "2",
        "IDENTIFY_LEASE_TTL_S": "3",
        "IDENTIFY_DRAIN_SLICE_S": "1",
        "IDENTIFY_COALESCE": "0",
        "IDENTIFY_METRICS_PORT": "0",
    }
    env.update(overrides)
    return env


def status(config: QueueConfig) -> dict[str, Any]:
    client = connect(config.redis_url)
    try:
        return gather(client, Keys(config.namespace), config.shards)
    finally:
        client.close()


def drained(config: QueueConfig) -> bool:
    return status(config)["accepted_not_done"] == 0


def dead_letters(config: QueueConfig, **selection: Any) -> list[dict[str, Any]]:
    return list(DeadLetterQueue(config).entries(Selection(**selection)))


def users_records(n: int, prefix: str = "user") -> list[dict[str, Any]]:
    return [{"user_id": f"{prefix}-{i:05d}", "user_properties": {"$set": {"seq": 0}}} for i in range(n)]


# -- Redis read back as plain values (the script tests assert exactly what a script leaves) -------------
def redis_ms(client: redis.Redis) -> int:
    """Redis's clock in ms, as the scripts read it (``iq.now_ms``)."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    """HGETALL, decoded."""
    raw = cast(dict[bytes, bytes], client.hgetall(key))
    return {k.decode(): v.decode() for k, v in raw.items()}


def scored(client: redis.Redis, key: str) -> list[tuple[str, int]]:
    """ZRANGE WITHSCORES, decoded, scores as integers (every score identify-queue writes is one)."""
    raw = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
    return [(m.decode(), int(s)) for m, s in raw]


def members(client: redis.Redis, key: str) -> list[bytes]:
    """ZRANGE 0 -1: a sorted set's members, in order."""
    return cast(list[bytes], client.zrange(key, 0, -1))


def listed(client: redis.Redis, key: str) -> list[bytes]:
    """LRANGE 0 -1."""
    return cast(list[bytes], client.lrange(key, 0, -1))


def pttl(client: redis.Redis, key: str) -> int:
    return int(client.pttl(key))


def total_of(client: redis.Redis, keys: Keys, shards: int) -> int:
    """Records accepted and not yet done, summed over the shards' ``total`` counters."""
    return sum(int(client.get(keys.shard(s).total) or 0) for s in range(shards))


def counts_of(client: redis.Redis, keys: Keys, shards: int, what: str) -> dict[str, int]:
    """A per-shard hash of counts (``stats``, ``dlq_counts``) summed over the shards; its text and
    time fields (the last error, ``*_ms``) are left out."""
    out: dict[str, int] = {}
    for s in range(shards):
        for name, value in text_hash(client, getattr(keys.shard(s), what)).items():
            if value.isdigit() and not name.endswith("_ms"):
                out[name] = out.get(name, 0) + int(value)
    return out


def snapshot(client: redis.Redis, namespace: str) -> dict[bytes, Any]:
    """Every key of a namespace with its value, read by type: equal snapshots mean nothing changed."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(f"{namespace}:*"):
        kind = cast(bytes, client.type(key)).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.smembers(key) if kind == "set" else kind
        out[key] = (kind, value)
    return out


# -- a scripted Amplitude for the real Drainer -----------------------------------------------------
#: What a ScriptedSink does with one request: answer, raise (SinkTimeout ...), or decide by a
#: function of the request's identifications.
Reply = HttpResult | SinkError | Callable[[list[dict[str, Any]]], HttpResult | SinkError]


def answer(status: int, doc: Any = None, headers: dict[str, str] | None = None) -> HttpResult:
    """An HTTP answer with a JSON body (``{"code": status}`` when no document is given)."""
    body = orjson.dumps({"code": status} if doc is None else doc)
    return HttpResult(status, {"content-type": "application/json", **(headers or {})}, body)


OK = answer(200, {"code": 200, "events_ingested": 1})


class ScriptedSink:
    """Amplitude for a Drainer in the test's process: each request gets the next scripted reply
    (then ``default``), and is kept, decoded, in ``requests``.

    ``body`` is the real form encoding (``worker.drain.sink.form_body``), so request sizes and the
    growth of non-ASCII bytes are what production sends; ``post`` decodes it back.
    """

    def __init__(self, *replies: Reply, default: Reply = OK, api_key: str = SENTINEL_API_KEY) -> None:
        self.replies: deque[Reply] = deque(replies)
        self.default = default
        self.api_key = api_key
        self.requests: list[list[dict[str, Any]]] = []
        self.bodies: list[bytes] = []
        self.answers: list[int | None] = []

    def body(self, identification: bytes) -> bytes:
        return form_body(self.api_key, identification)

    def post(self, body: bytes) -> HttpResult:
        form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        assert form["api_key"] == [self.api_key]
        records: list[dict[str, Any]] = orjson.loads(form["identification"][0])
        self.requests.append(records)
        self.bodies.append(body)
        reply = self.replies.popleft() if self.replies else self.default
        result = reply(records) if callable(reply) else reply
        if isinstance(result, SinkError):
            self.answers.append(None)
            raise result
        self.answers.append(result.status)
        return result

    def delivered(self) -> list[dict[str, Any]]:
        """The identifications of every request answered with a 2xx, in order."""
        return [r for records, status in zip(self.requests, self.answers, strict=True)
                if status is not None and 200 <= status < 300 for r in records]  # fmt: skip


def users_in_shard(shard: int, shards: int, count: int, prefix: str = "user") -> list[str]:
    """``count`` user ids whose records go to ``shard`` (of ``shards``), in a stable order."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        user = f"{prefix}-{n:05d}"
        if shard_of(f"u:{user}", shards) == shard:
            found.append(user)
        n += 1
    return found


def queue_entry(user_key: str, seq: int, *, enqueued_ms: int = 0, attempts: int = 0, pad: int = 0) -> bytes:
    """A queue entry as the enqueue script writes it: the update ``seq`` of the user (``u:<id>``),
    padded with ``pad`` bytes of a property when a test needs sizes."""
    props: dict[str, Any] = {"n": seq}
    if pad:
        props["pad"] = "x" * pad
    data = orjson.dumps({"user_id": user_key.removeprefix("u:"), "user_properties": {"$set": props}})
    return entry.encode(user_key, data, seq, enqueued_ms, attempts)


def make_wait(client: redis.Redis, k: ShardKeys, user_key: str, seqs: Iterable[int], until_ms: int,
              reason: str = "held") -> list[bytes]:  # fmt: skip
    """Put updates of a user among the shard's waiting ones and park the user until ``until_ms``,
    as a settle does; returns the entries, oldest first."""
    raws = [queue_entry(user_key, s) for s in sorted(seqs)]
    if raws:
        client.zadd(k.waiting, dict.fromkeys(waiting.members([entry.decode(r) for r in raws]), 0))
    client.zadd(k.parked, {user_key: until_ms})
    client.hset(k.parked_why, user_key, reason)
    return raws


class AnswerDroppingProxy:
    """A TCP proxy on loopback in front of a redis-server that can lose answers: a command whose
    bytes hold a pattern reaches Redis and runs, and then its connection is closed before the
    answer comes back, as when a network path or a proxy drops a connection at that moment."""

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._pattern: bytes | None = None
        self._once = True
        self._share = 1.0
        self._random = random.Random(0)
        self.dropped = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_answer_to(self, pattern: bytes) -> None:
        """Lose the answer to the next command holding ``pattern``."""
        with self._lock:
            self._pattern, self._once, self._share = pattern, True, 1.0

    def drop_answers(self, pattern: bytes, share: float, seed: int = 0) -> None:
        """Lose the answers to ``share`` of the commands holding ``pattern``, drawn from ``seed``,
        until ``stop_dropping``."""
        with self._lock:
            self._pattern, self._once, self._share, self._random = pattern, False, share, random.Random(seed)

    def stop_dropping(self) -> None:
        with self._lock:
            self._pattern = None

    def _drops(self, data: bytes) -> bool:
        with self._lock:
            if self._pattern is None or self._pattern not in data or self._random.random() >= self._share:
                return False
            if self._once:
                self._pattern = None
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self._target)
        except OSError:
            client.close()
            return
        drop_next = False
        with client, server:
            sel = selectors.DefaultSelector()
            sel.register(client, selectors.EVENT_READ, server)
            sel.register(server, selectors.EVENT_READ, client)
            while True:
                for key, _ in sel.select():
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    if src is client:
                        drop_next = drop_next or self._drops(data)  # a long command comes in pieces
                    elif drop_next:
                        with self._lock:
                            self.dropped += 1
                        return  # the command ran; its answer is lost with the connection
                    try:
                        key.data.sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        self._listener.close()
