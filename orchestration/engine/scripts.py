"""The Lua scripts of `lua/`, loaded with what they share and registered on a client.

Each script's source is: the state names (`states.lua_prelude`), the outbox member
encoding (`keys.lua_members`), the item mark of message templates (`messages.ITEM`), the
shared helpers (`lua/_common.lua`), the capacity helpers (`lua/_limits.lua`) for the scripts
that admit or release, then the script.
Every key a script touches comes in KEYS; ARGV carries values only.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis

from orchestration.engine.keys import lua_members
from orchestration.engine.messages import COUNT, ITEM
from orchestration.states import lua_prelude

if TYPE_CHECKING:
    from orchestration.engine.durability import Replicas

# scripts that always admit or release capacity get lua/_limits.lua; begin, finish and retry get it
# only in their gated variant (`limits=True`), so a stage with no limits runs the script it always did
WITH_LIMITS = frozenset({"sweep.lua", "release.lua"})


def source(name: str, allow_oom: bool = False, limits: bool = False) -> str:
    """The full source of script `name` (e.g. 'begin.lua').

    `allow_oom` marks it runnable when Redis is at `maxmemory` (Redis 7's script flags): only
    for the small bookkeeping writes that let an attempt end and a run finish under memory
    pressure (begin, retry, a failure's commit), never for outputs or context values.
    """
    lua = resources.files("orchestration.engine").joinpath("lua")
    body = (
        lua_prelude()
        + lua_members()
        + f"local ITEM_MARK, COUNT_MARK = '{ITEM}', '{COUNT}'\n"
        + lua.joinpath("_common.lua").read_text(encoding="utf-8")
        + (lua.joinpath("_limits.lua").read_text(encoding="utf-8") if limits or name in WITH_LIMITS else "")
        + lua.joinpath(name).read_text(encoding="utf-8")
    )
    return ("#!lua flags=allow-oom\n" + body) if allow_oom else body


class Script:
    """A script that may also run under Redis's memory limit (`allow-oom`, Redis 7's script
    flags), falling back to the plain script on a Redis older than 7, which has no flags."""

    def __init__(self, client: redis.Redis, name: str, limits: bool = False):
        self._plain = client.register_script(source(name, limits=limits))
        self._oom: Any = client.register_script(source(name, allow_oom=True, limits=limits))

    def __call__(
        self,
        keys: Sequence[str],
        args: Sequence[Any],
        allow_oom: bool = False,
        wait: Replicas | None = None,
    ) -> Any:
        """Run the script; with `wait` (durability.Replicas), run Redis's WAIT right after it on the
        same connection and return (reply, Replication)."""
        if allow_oom and self._oom is not None:
            try:
                return self._run(self._oom, keys, args, wait)
            except redis.ResponseError as exc:
                if "near '#'" not in str(exc) and "shebang" not in str(exc).lower():
                    raise
                self._oom = None  # Redis < 7: no script flags
        return self._run(self._plain, keys, args, wait)

    @staticmethod
    def _run(script: Any, keys: Sequence[str], args: Sequence[Any], wait: Replicas | None) -> Any:
        if wait is None:
            return script(keys=keys, args=args)
        # WAIT counts the replicas that have this connection's writes: one pipeline, one connection
        for again in (True, False):
            pipe = script.registered_client.pipeline(transaction=False)
            wait.queue(pipe, lambda p: script(keys=keys, args=args, client=p))
            try:
                replies = pipe.execute()
            except redis.exceptions.NoScriptError:
                # a new primary (a failover) that has not seen the script: the pipeline checked for
                # it on the old one. Loaded here, the call is sent once more (nothing ran).
                if not again:
                    raise
                script.registered_client.script_load(script.script)
                continue
            return wait.read(replies)
        raise AssertionError("unreachable")


__all__ = ["Script", "source"]
