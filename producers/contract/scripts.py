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

import re
from functools import cache
from importlib.resources import files
from typing import Any

import redis

from producers.contract.connection import store_errors
from producers.contract.errors import IdentifyQueueError, ScriptRefusal, StoreError

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
    """One registered script: ``script(keys, args)`` runs it, raising the tree's errors."""

    def __init__(self, client: redis.Redis, package: str, name: str) -> None:
        self.name = name
        self._script = client.register_script(source(package, name))

    def __call__(self, keys: list[Any], args: list[Any] | None = None, *, action: str = "") -> Any:
        try:
            with store_errors(action or self.name):
                return self._script(keys=keys, args=args or [])
        except StoreError as exc:
            refusal = _refusal(exc.__cause__)
            if refusal is None:
                raise
            raise refusal from None


def _refusal(cause: BaseException | None) -> ScriptRefusal | None:
    if not isinstance(cause, redis.ResponseError):
        return None
    code, _, rest = str(cause).partition(" ")
    cls = codes().get(code)
    if cls is None:
        return None
    fields = dict(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return cls.from_fields(fields)
