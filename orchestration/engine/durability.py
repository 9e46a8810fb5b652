"""Acknowledged writes that survive a failover: Redis's WAIT after a run's creation and an attempt's
commit (`CHORDFLOW_REPLICAS_ACK=N`; 0, the default, is off). An attempt's start is not waited for:
replicas apply writes in order, so its commit's WAIT confirms it too (Transitions.begin).

Redis replicates asynchronously: a primary that dies right after a commit may take it with it, and
Sentinel then promotes a replica that never saw it. With N > 0 a write counts as done only when N
replicas have it, and every other replica attached to the primary too (`Replicas`): a run id is
handed to the client, and an attempt's commit ends its attempt, only then. A commit that fewer
replicas confirmed is sent again with the same token while the attempt keeps its lease (finish.lua
answers `already` when it is in, and commits it afresh on a new primary that missed it). It needs
N + 1 replicas to survive the loss of one (docs/security.md).

`record` is for tests only (`CHORDFLOW_TEST_ACK_LOG`): it appends every acknowledged write to a
JSONL file, fsync'd, for the failover harness's checker (tests/ha).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from orchestration.engine.replies import Replication
from orchestration.errors import NotReplicated
from orchestration.settings import Settings

_LOCK = threading.Lock()


class Replicas:
    """The replicas a write waits for (Redis WAIT): CHORDFLOW_REPLICAS_ACK, and every replica attached
    to the primary when it was written, if there are more.

    Why every attached one: Sentinel promotes the replica with the highest offset in its last INFO of
    each, which may be up to 5 s old during a failover. A write that N of M replicas confirmed may be
    missing on the one it promotes (the failover harness lost a run id this way, tests/ha). Waiting
    for all of them, a replica that stops answering stalls the writes until the primary drops it
    (`repl-timeout`) or the failover harness's `CLIENT KILL TYPE replica`; then N is enough.

    One pipeline, so one connection and one server: `ROLE` (how many replicas are attached, online),
    the write, a PUBLISH to `mark_key` (to no one), then WAIT for as many replicas as the last write
    saw. WAIT counts the replicas that have the connection's last replicated command; Redis
    replicates a PUBLISH, so that command is this one even when the caller's wrote nothing (a
    script that found its work done: finish.lua's `already`), and a confirmation always comes from
    the server that answered. PUBLISH writes no key, so it works at maxmemory (a failure's commit
    may run there) and costs no memory; on a replica it passes and the WAIT is refused."""

    def __init__(self, settings: Settings, mark_key: str):
        self.wanted = settings.replicas_ack
        self.timeout_ms = settings.replicas_ack_timeout_ms
        self.mark_key = mark_key
        self._attached = 0

    def queue(self, pipe: Any, write: Callable[[Any], None] | None = None) -> None:
        """Add to `pipe`: ROLE, the write (`write(pipe)`), the mark, then WAIT; `read` decodes."""
        pipe.execute_command("ROLE")
        if write is not None:
            write(pipe)
        pipe.publish(self.mark_key, "")
        pipe.wait(max(self.wanted, self._attached), self.timeout_ms)

    def read(self, replies: Sequence[Any]) -> tuple[Any, Replication]:
        """The write's own reply (None without one) and its Replication, from the pipeline's replies."""
        self._attached = attached(replies[0])
        reply = replies[1] if len(replies) == 4 else None
        return reply, Replication(int(replies[-1]), max(self.wanted, self._attached))

    def measure(self, client: redis.Redis) -> Replication:
        """How many replicas have every write this process made so far on `client`'s connection."""
        pipe = client.pipeline(transaction=False)
        self.queue(pipe)
        return self.read(pipe.execute())[1]


def attached(role: Any) -> int:
    """The replicas online on a primary, from its ROLE reply: [master, offset, [[ip, port, offset]...]]."""
    if not role or role[0] not in ("master", b"master"):
        return 0
    return len(role[2])


def replicas(settings: Settings, mark_key: str) -> Replicas | None:
    """A Replicas for these settings, or None when acknowledgements are off."""
    return Replicas(settings, mark_key) if settings.replicas_ack else None


def confirm(client: redis.Redis, wait: Replicas | None, what: str, tries: int = 3) -> None:
    """Wait until enough replicas (Replicas) have every write this process made so far on
    `client`, or raise NotReplicated."""
    if wait is None:
        return
    for _ in range(tries):
        got = wait.measure(client)
        if got.ok:
            return
    raise NotReplicated(what, got.confirmed, got.required, wait.timeout_ms * tries)


def record(settings: Settings, entry: Mapping[str, Any]) -> None:
    """Tests only: append an acknowledged write to CHORDFLOW_TEST_ACK_LOG, fsync'd."""
    path = settings.test_ack_log
    if not path:
        return
    line = json.dumps({**entry, "t": time.time(), "pid": os.getpid()}, separators=(",", ":")) + "\n"
    with _LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


__all__ = ["Replicas", "attached", "confirm", "record", "replicas"]
