"""Connecting to Redis, and translating redis-py's exceptions where they enter.

``REDIS_URL`` takes every form of Redis users run, parsed once here (``RedisTarget``) and used by
every process, Celery's broker included:

    redis://[user:password@]host[:port][/db]
    rediss://[user:password@]host[:port][/db][?ssl_ca_certs=CA&ssl_certfile=CERT&ssl_keyfile=KEY]
    unix://[user:password@]/path/to/redis.sock[?db=N]
    redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/db][?sentinel_password=...]
    rediss+sentinel://...                       (TLS to the sentinels and the master)

TLS verifies the server's certificate, always, queue and broker alike (``ssl_cert_reqs=required``
and host names checked; ``ssl_ca_certs`` names the CA when it is not a system one;
``ssl_certfile``/``ssl_keyfile`` give a client certificate).  With Sentinel the user and password
are the master's; ``sentinel_username``/``sentinel_password`` are the sentinels' own, when they
have one.  After a failover every client finds the new master by itself (redis-py's Sentinel
pool, kombu's sentinel transport): no process needs a restart.

Errors are translated here: a connection refused, a timeout, a command refused, a permission the
Redis user lacks (one line naming the command or channel, and the ACL to grant).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterError, MovedError, NoPermissionError, TryAgainError
from redis.retry import Retry
from redis.sentinel import Sentinel

from producers.contract.errors import ConfigError, SlotMoving, StoreError

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_KNOWN_PARAMS = {*_TLS_PARAMS, "db", "sentinel_username", "sentinel_password", "ssl_check_hostname"}
_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_DEFAULT_PORT = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379, "rediss+sentinel": 26379}

# Timeouts of every connection: a dead Redis fails a call instead of hanging it.
CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to reach it, read from a URL once (``parse_url``)."""

    url: str
    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service: str = ""
    tls: dict[str, Any] = field(default_factory=dict)
    sentinel_auth: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")


def parse_url(url: str, variable: str = "REDIS_URL") -> RedisTarget:
    """Read a Redis URL; anything malformed raises ConfigError naming ``variable``."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"{variable} {why}, got {describe(url)!r} (see docs/configuration.md for the forms it takes)"
        )

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise bad(f"must start with {', '.join(s + '://' for s in SCHEMES)}")
    rest, _, query = rest.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - _KNOWN_PARAMS)
    if unknown:
        raise bad(f"has unknown parameters {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN_PARAMS))})")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostpart = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    tls = _tls(scheme, params, bad)
    if scheme == "unix":
        socket_path = "/" + path
        if not path:
            raise bad("names no socket path")
        return RedisTarget(url, scheme, path=socket_path, db=_db(params.get("db", "0"), bad), username=username,
                           password=password)  # fmt: skip
    hosts = tuple(_host(h, _DEFAULT_PORT[scheme], bad) for h in hostpart.split(",")) if hostpart else ()
    if not hosts:
        raise bad("names no host")
    parts = [p for p in path.split("/") if p]
    if scheme.endswith("+sentinel"):
        if not parts:
            raise bad("names no Sentinel service (redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB])")
        service, db = parts[0], _db(parts[1] if len(parts) > 1 else "0", bad)
        auth = {k.removeprefix("sentinel_"): v for k, v in params.items() if k.startswith("sentinel_")}
        return RedisTarget(url, scheme, hosts=hosts, db=db, username=username, password=password, service=service,
                           tls=tls, sentinel_auth=auth)  # fmt: skip
    if len(parts) > 1:
        raise bad("has a path beyond the database number")
    db = _db(parts[0] if parts else params.get("db", "0"), bad)
    return RedisTarget(url, scheme, hosts=hosts, db=db, username=username, password=password, tls=tls)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None, unquote(user) or None  # redis://password@host, as redis-py reads it
    return unquote(user) or None, unquote(password)


def _host(text: str, default_port: int, bad: Any) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\w*))?|([^:\[\]]+)(?::(\w*))?", text)
    if not match:
        raise bad(f"has a host that cannot be read ({text!r})")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) if match.group(1) else match.group(4)
    if port_text is None or port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad(f"has a port that is not a number from 1 to 65535 ({port_text!r})")
    return host, int(port_text)


def _db(text: str, bad: Any) -> int:
    if not text.isdigit():
        raise bad(f"has a database that is not a number ({text!r})")
    return int(text)


def _tls(scheme: str, params: dict[str, str], bad: Any) -> dict[str, Any]:
    given = {k: v for k, v in params.items() if k in _TLS_PARAMS or k == "ssl_check_hostname"}
    if not scheme.startswith("rediss"):
        if given:
            raise bad(f"gives TLS parameters ({', '.join(sorted(given))}) to a plain connection; use rediss://")
        return {}
    reqs = given.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise bad("has ssl_cert_reqs other than required, optional or none")
    check_hostname = given.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
    tls: dict[str, Any] = {"ssl_cert_reqs": reqs, "ssl_check_hostname": check_hostname}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if given.get(name):
            tls[name] = given[name]
    return tls


def connect(url: str | RedisTarget, *, resend: bool = True, **options: Any) -> redis.Redis:
    """A client for ``url`` with timeouts, so that a dead Redis fails a call instead of hanging it.

    ``resend=False``: a command whose answer does not come (the connection lost after it was sent,
    a timeout) fails at once.  By default redis-py sends it again, up to ten times, and a script
    that already ran then runs again: harmless for a read, a duplicate for an enqueue (delivery is
    at least once), but a drain's settle run twice trims its in-flight list twice, and records not
    yet sent would be lost (tests/drain/test_lost_answers.py).  The drain handles a failed call
    itself: what it claimed stays in flight and is read again.
    """
    target = url if isinstance(url, RedisTarget) else parse_url(url)
    options = _options(target, options)
    if not resend:
        options["retry"] = Retry(NoBackoff(), 0)
    if target.scheme == "unix":
        return redis.Redis(unix_socket_path=target.path, db=target.db, **_without_tcp(options))
    if target.sentinel:
        sentinel_options = _sentinel_options(target, options)
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
        client: redis.Redis = sentinel.master_for(target.service, db=target.db)  # type: ignore[no-untyped-call]
        return client
    # Several hosts name nodes of one cluster: the first that answers says what it is, and the
    # cluster client starts from all of them (a dead one among them does not stop a start).
    for host, port in target.hosts:
        client = redis.Redis(host=host, port=port, db=target.db, **options)
        enabled = _is_cluster_node(client, target.db)
        if enabled is not None:
            break
        client.close()
    else:
        host, port = target.hosts[0]  # none answers: the first command says so
        return redis.Redis(host=host, port=port, db=target.db, **options)
    if not enabled:
        if len(target.hosts) > 1:
            client.close()
            raise ConfigError(
                f"REDIS_URL names several hosts, but {host}:{port} is not a Redis Cluster node; only a cluster's "
                "URL (any of its nodes) or a Sentinel URL (redis+sentinel://) names several"
            )
        return client
    client.close()
    nodes = [ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call]
    cluster: redis.Redis = RedisCluster(startup_nodes=nodes, **options)  # type: ignore[assignment]
    return cluster


def _is_cluster_node(client: redis.Redis, db: int) -> bool | None:
    """Whether the server at an address of REDIS_URL is a Redis Cluster node, or None when it
    cannot be reached.

    Asked for every client made (each process makes a few, when it starts): an answer kept per
    address outlived the server that gave it, and a cluster node later started on a port a plain
    Redis had used got a plain client (a test run met it).  INFO is the cheap question; a user
    without it (managed Redis) is asked CLUSTER INFO, which a server without cluster support
    refuses.
    """
    try:
        enabled = bool(client.info("cluster").get("cluster_enabled", 0))
    except NoPermissionError:
        try:
            client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            enabled = True
        except redis.ResponseError:
            enabled = False
    except redis.RedisError:
        return None
    if enabled and db:
        raise ConfigError(f"REDIS_URL names database {db}, but a Redis Cluster has database 0 only")
    return enabled


def _options(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    """The client options of every connection to ``target``, sync or asyncio alike."""
    options = dict(options)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    options.setdefault("health_check_interval", 30)
    if target.username is not None:
        options.setdefault("username", target.username)
    if target.password is not None:
        options.setdefault("password", target.password)
    if target.tls:
        options.update(ssl=True, **target.tls)
    return options


def _sentinel_options(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    sentinel_options = {"socket_connect_timeout": options["socket_connect_timeout"], "socket_timeout": 5.0,
                        **target.sentinel_auth}  # fmt: skip
    if target.tls:
        sentinel_options.update(ssl=True, **target.tls)
    return sentinel_options


#: What the asyncio producer says on a Redis Cluster (docs/usage.md names the alternative too).
ASYNC_CLUSTER_REFUSED = (
    "AsyncIdentifyProducer works with one Redis or Sentinel, not a Redis Cluster: on a cluster use "
    "IdentifyProducer (from a thread: asyncio.to_thread)"
)


def connect_async(url: str | RedisTarget, **options: Any) -> Any:
    """A redis.asyncio client for ``url``, with the same options as ``connect``: one Redis (TCP,
    TLS, a unix socket) or Sentinel's master.  Several hosts name a Redis Cluster: refused."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    target = url if isinstance(url, RedisTarget) else parse_url(url)
    options = _options(target, options)
    if target.scheme == "unix":
        return aioredis.Redis(unix_socket_path=target.path, db=target.db, **_without_tcp(options))
    if target.sentinel:
        sentinel = AsyncSentinel(list(target.hosts), sentinel_kwargs=_sentinel_options(target, options), **options)  # type: ignore[no-untyped-call]
        return sentinel.master_for(target.service, db=target.db)
    if len(target.hosts) > 1:
        raise ConfigError(ASYNC_CLUSTER_REFUSED)
    host, port = target.hosts[0]
    return aioredis.Redis(host=host, port=port, db=target.db, **options)


async def close_async(client: Any) -> None:
    """Close an asyncio client of ``connect_async``, and its sentinels' connections with Sentinel
    (closing the master's client leaves them open)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    await client.aclose()
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()


def _without_tcp(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if not k.startswith("ssl")}


def celery_broker(url: str | RedisTarget) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(broker URL, transport options, broker_use_ssl) for Celery's Redis transport.

    TLS settings go through ``broker_use_ssl``, never the URL, so that kombu verifies certificates
    as redis-py does (kombu alone would default to an unverified connection).
    """
    target = url if isinstance(url, RedisTarget) else parse_url(url)
    auth = ""
    if target.password is not None:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    options: dict[str, Any] = {}
    use_ssl = None
    if target.tls:
        use_ssl = {"ssl_cert_reqs": _CERT_REQS[target.tls["ssl_cert_reqs"]]}
        use_ssl.update({k: v for k, v in target.tls.items() if k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")})
    if target.scheme == "unix":
        return f"redis+socket://{auth}{target.path}?virtual_host={target.db}", options, None
    if target.sentinel:
        options["master_name"] = target.service
        if target.sentinel_auth or target.tls:
            options["sentinel_kwargs"] = {**target.sentinel_auth, **({"ssl": True} if target.tls else {})}
        url_ = ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, p in target.hosts)
        return url_, options, use_ssl
    if len(target.hosts) > 1:
        raise ConfigError(
            "Celery's broker (IDENTIFY_BROKER_URL, by default REDIS_URL) names several hosts: it must be one Redis, "
            "a Sentinel URL or amqp://; with the queue on a Redis Cluster, set IDENTIFY_BROKER_URL"
        )
    host, port = target.hosts[0]
    return f"{'rediss' if target.tls else 'redis'}://{auth}{host}:{port}/{target.db}", options, use_ssl


def describe(url: str) -> str:
    """The URL without its password or query, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url[:60]
    rest = rest.split("?", 1)[0]
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{hosts}" if user else f"***@{hosts}"
    return f"{scheme}://{netloc}{slash}{path}"


_NO_PERMISSION = re.compile(r"no permissions to run the '([^']+)' command")


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn a redis-py exception into StoreError naming what we were doing."""
    try:
        yield
    except NoPermissionError as exc:
        raise StoreError(f"{action}: {permission_hint(str(exc))}") from exc
    except (ClusterError, TryAgainError, MovedError, AskError) as exc:
        raise SlotMoving(f"{action}: a slot of the Redis Cluster is moving between nodes; nothing was run") from exc
    except redis.AuthenticationError as exc:
        raise StoreError(f"{action}: Redis refused the user or password in REDIS_URL ({exc})") from exc
    except redis.ConnectionError as exc:
        raise StoreError(f"{action}: Redis is unreachable ({exc})") from exc
    except redis.TimeoutError as exc:
        raise StoreError(f"{action}: Redis did not answer in time ({exc})") from exc
    except redis.ResponseError as exc:
        if "no permissions" in str(exc).lower():
            raise StoreError(f"{action}: {permission_hint(str(exc))}") from exc
        raise StoreError(f"{action}: Redis refused the command ({exc})") from exc
    except redis.InvalidResponse as exc:
        raise StoreError(f"{action}: the server at REDIS_URL does not speak Redis's protocol (another kind of "
                         f"server on that port? {exc})") from exc  # fmt: skip
    except redis.RedisError as exc:
        raise StoreError(f"{action}: Redis failed ({type(exc).__name__}: {exc})") from exc


def permission_hint(message: str) -> str:
    """What the Redis user lacks, and the ACL to grant, from Redis's NOPERM message."""
    command = _NO_PERMISSION.search(message)
    if command:
        name = command.group(1)
        return (f"the Redis user may not run {name.upper()}: grant it (ACL SETUSER <user> +{name}); "
                "`identify-queue acl` prints every permission identify-queue needs")  # fmt: skip
    if "channel" in message:
        return ("the Redis user may not use Celery's control channels: grant them (see `identify-queue acl`), "
                "or run the worker with IDENTIFY_REMOTE_CONTROL=0")  # fmt: skip
    if "key" in message:
        return ("the Redis user may not touch identify-queue's keys: grant ~<namespace>:* "
                "(see `identify-queue acl`)")  # fmt: skip
    return f"the Redis user lacks a permission ({message}); `identify-queue acl` prints every one needed"
