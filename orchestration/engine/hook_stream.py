"""The hooks outbox as its readers see it: a Redis stream (`keys.hooks`) read by the consumer group
of the hook senders (`hook_sender.py`), one consumer per worker's sender.

The scripts and `runs.create_run` add entries (trimmed at HOOKS_MAXLEN); a sender reads new ones,
takes over those another sender left pending too long, keeps its own from being taken while it
delivers them, then acknowledges and deletes each. `HookStream` is the run store's `hooks`
(`store.RunStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from orchestration.engine.keys import Keys

HOOKS_MAXLEN = 100_000  # as the scripts trim the hooks outbox (lua/_common.lua)

#: An entry of the hooks outbox: (entry id, fields); a claimed id whose entry is gone has None.
HookEntry = tuple[str | None, dict[str, str] | None]


class HookStream:
    """The hook senders' consumer group on the hooks outbox (see the module docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._r: Any = client
        self.keys = keys

    def create_hook_group(self, group: str) -> None:
        """Create the consumer group `group` of the hooks outbox (and the stream), unless it exists."""
        try:
            self._r.xgroup_create(self.keys.hooks(), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_hooks(self, group: str, consumer: str, count: int, block_ms: int) -> list[HookEntry]:
        """Up to `count` new entries for `consumer` (waiting up to `block_ms`), now pending on it."""
        reply = self._r.xreadgroup(group, consumer, {self.keys.hooks(): ">"}, count=count, block=block_ms)
        return [entry for _stream, entries in _streams(reply) for entry in entries]

    def claim_idle_hooks(
        self, group: str, consumer: str, idle_ms: int, count: int, pages: int = 10
    ) -> list[HookEntry]:
        """Take over for `consumer` the entries pending on other consumers for over `idle_ms`
        (XAUTOCLAIM, up to `pages` pages of `count`). An id whose entry is gone comes with None."""
        claimed: list[HookEntry] = []
        cursor = "0-0"
        for _ in range(pages):
            reply = self._r.xautoclaim(
                self.keys.hooks(), group, consumer, idle_ms, start_id=cursor, count=count
            )
            cursor, entries = reply[0], reply[1]
            claimed += entries
            if cursor in ("0-0", b"0-0") or not entries:
                break
        return claimed

    def hold_hooks(self, group: str, consumer: str, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries pending on `consumer`, so no other consumer takes them."""
        self._r.xclaim(self.keys.hooks(), group, consumer, 0, list(entry_ids), justid=True)

    def ack_hook(self, group: str, entry_id: str) -> None:
        """A delivered entry: acknowledge it and delete it from the stream, in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        pipe.xack(self.keys.hooks(), group, entry_id)
        pipe.xdel(self.keys.hooks(), entry_id)
        pipe.execute()

    def forget_hook_consumers(self, group: str, keep: str, quiet_ms: float) -> list[str]:
        """Drop from `group` the consumers (but `keep`) with nothing pending and idle over
        `quiet_ms`: the senders of workers that are gone. Returns their names."""
        gone = []
        for consumer in self._r.xinfo_consumers(self.keys.hooks(), group):
            name = consumer.get("name")
            if (
                name != keep
                and int(consumer.get("pending", 0)) == 0  # not a state
                and int(consumer.get("idle", 0)) > quiet_ms
            ):
                self._r.xgroup_delconsumer(self.keys.hooks(), group, name)
                gone.append(name)
        return gone


def _streams(reply: Any) -> list[tuple[str, list[HookEntry]]]:
    """XREADGROUP's reply as [(stream, entries)], whichever shape the client returned."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [
            (stream, list(entries[0] if entries and isinstance(entries[0], list) else entries))
            for stream, entries in reply.items()
        ]
    return [(stream, list(entries)) for stream, entries in reply]
