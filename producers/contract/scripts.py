"""Lua scripts as files: loaded with the shared prelude, registered once, error codes mapped to the tree.

Every script identify-queue runs in Redis is a ``.lua`` file in its package's ``lua/`` folder
(``producers/lua/``, ``worker/lua/``), shipped as package data.  Each opens with a header giving
the KEYS and ARGV it takes and the reply it returns.  ``source(package, name)`` builds what Redis
runs: ``producers/contract/lua/prelude.lua`` (the ``iq`` table: Redis's clock in ms, pushing in
slices, waking the dispatcher, error replies), then each library the script names in a
``--! uses: <name>`` line (``<package>/lua/lib/<name>.lua``), then the script.  ``scripts/luacheck``
checks exactly that text.

An error reply is ``<CODE> key=value ...`` (``iq.fail``).  ``Script.__call__`` turns it into the
exception of the error tree whose class declares that ``code``, with the pairs as its ``fields``;
other Redis errors become StoreError.  No caller matches a message.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from functools import cache
from importlib.resources import files
from typing import Any

import redis

from producers.contract.connection import permission_hint, store_errors
from producers.contract.errors import IdentifyQueueError, NotReplicated, ScriptRefusal, SlotMoving, StoreError

#: How long a script call waits out a Redis Cluster slot that is moving between nodes.
SLOT_MOVE_WAIT_S = 10.0
FIRST_PAUSE_S = 0.05

log = logging.getLogger("identify_queue.redis")

_USES = re.compile(r"^--! uses: (\w+)\s*$", re.M)


@cache
def source(package: str, name: str) -> str:
    """The text Redis runs for ``<package>/lua/<name>.lua``: prelude, libraries, script."""
    lua = files(package) / "lua"
    body = (lua / f"{name}.lua").read_text()
    parts = [(files("producers.contract") / "lua" / "prelude.lua").read_text()]
    parts += [(lua / "lib" / f"{lib}.lua").read_text() for lib in _USES.findall(body)]
    return "\n".join([*parts, body])


def codes() -> dict[str, type[ScriptRefusal]]:
    """Every error code a script may answer, and its exception: read from the tree itself."""
    found: dict[str, type[ScriptRefusal]] = {}
    pending: list[type[IdentifyQueueError]] = [ScriptRefusal]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if issubclass(cls, ScriptRefusal) and cls.code:
            found[cls.code] = cls
    return found


class Script:
    """One registered script: ``script(keys, args)`` runs it, raising the tree's errors.

    ``replicas``: after a write that producers are told is accepted, wait (``WAIT``, on the same
    connection, right after the script) until that many replicas confirm it, for at most
    ``replica_timeout_ms``; fewer raises NotReplicated (IDENTIFY_MIN_REPLICAS).
    """

    def __init__(
        self, client: redis.Redis | None, package: str, name: str, *, replicas: int = 0, replica_timeout_ms: int = 0
    ) -> None:
        """``client`` None: a script only ever run through ``run_together`` (or its asyncio twin),
        which needs its text and digest, not a client of its own."""
        self.name = name
        self._client: Any = client
        self._source = source(package, name)
        self.sha = hashlib.sha1(self._source.encode(), usedforsecurity=False).hexdigest()
        self._script: Any = client.register_script(self._source) if client is not None else None
        self._replicas, self._replica_timeout_ms = replicas, replica_timeout_ms

    @property
    def text(self) -> str:
        """What Redis runs (SCRIPT LOAD it when Redis answers NOSCRIPT)."""
        return self._source

    def __call__(self, keys: list[Any], args: list[Any] | None = None, *, action: str = "") -> Any:
        # A cluster slot moving (seconds at most) is waited out here: the call was not run, so
        # running it again cannot apply it twice.
        deadline = time.monotonic() + SLOT_MOVE_WAIT_S
        pause = FIRST_PAUSE_S
        while True:
            try:
                return self._call(keys, args, action or self.name)
            except SlotMoving as exc:
                if time.monotonic() + pause > deadline:
                    raise
                if pause == FIRST_PAUSE_S:
                    log.info("%s; waiting for it to settle", exc)
                time.sleep(pause)
                if hasattr(self._client, "nodes_manager"):
                    self._client.nodes_manager.initialize()  # learn where the slot is now
                pause = min(pause * 2, 0.5)

    def _call(self, keys: list[Any], args: list[Any] | None, action: str) -> Any:
        try:
            with store_errors(action):
                if not self._replicas:
                    return self._script(keys=keys, args=args or [])
                node = self._node(keys)
                node.script_load(self._source)  # queue() sends EVALSHA alone: the script must be there
                pipe = node.pipeline(transaction=False)
                self.queue(pipe, keys, args or [])
                pipe.execute_command("WAIT", self._replicas, self._replica_timeout_ms)
                reply, confirmed = pipe.execute()
        except StoreError as exc:
            if isinstance(exc.__cause__, redis.ResponseError):
                raise self.error(exc.__cause__, action) from None
            raise
        if int(confirmed) < self._replicas:
            raise NotReplicated(action, int(confirmed), self._replicas, self._replica_timeout_ms)
        return reply

    def _node(self, keys: list[Any]) -> Any:
        """The client to pipeline a call with WAIT on: on a cluster, the node of the call's slot
        (a cluster's own pipeline refuses EVALSHA, and WAIT must follow the write on its connection)."""
        client: Any = self._client
        if not hasattr(client, "get_node_from_key"):
            return client
        return client.get_redis_connection(client.get_node_from_key(keys[0]))

    def queue(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        """Add a call of this script to a pipeline, as EVALSHA alone: redis-py's script objects would
        ask SCRIPT EXISTS first, a round trip per pipeline.  A Redis that lacks the script (after a
        restart or a failover) answers NOSCRIPT, and ``run_together`` loads it and runs the call again."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def error(self, exc: BaseException, action: str = "") -> IdentifyQueueError:
        """The error of the tree for what Redis answered this script: its code's exception, a
        permission to grant (naming the command), or StoreError."""
        refusal = _refusal(exc)
        if refusal is not None:
            return refusal
        denied = _denied_command(str(exc), self._source)
        if denied:
            hint = permission_hint(f"no permissions to run the {denied!r} command")
            return StoreError(f"{action or self.name}: {hint} ({self.name}.lua)")
        try:
            with store_errors(action or self.name):
                raise exc
        except StoreError as translated:
            return translated


_SCRIPT_LINE = re.compile(r"can't run this command or subcommand.*@user_script:(\d+)")
_CALL = re.compile(r"redis\.p?call\('(\w+)'")


def _denied_command(message: str, text: str) -> str | None:
    """The command a script ran that the Redis user may not run: Redis names only the script's
    line, so the command is read from that line of the script as it was sent."""
    line = _SCRIPT_LINE.search(message)
    if line is None:
        return None
    lines = text.splitlines()
    number = int(line.group(1))
    call = _CALL.search(lines[number - 1]) if 0 < number <= len(lines) else None
    return call.group(1).lower() if call else "(a command of the script)"


def _refusal(cause: BaseException | None) -> ScriptRefusal | None:
    if not isinstance(cause, redis.ResponseError):
        return None
    code, _, rest = str(cause).partition(" ")
    cls = codes().get(code)
    if cls is None:
        return None
    fields = dict(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return cls.from_fields(fields)
