"""Acknowledged writes that survive a failover: Redis's WAIT after a run's creation, an attempt's
start and its commit (`CHORDFLOW_REPLICAS_ACK=N`; 0, the default, is off).

Redis replicates asynchronously: a primary that dies right after a commit may take it with it, and
Sentinel then promotes a replica that never saw it. With N > 0 a write counts as done only when N
replicas have it: a run id is handed to the client, and an attempt's commit ends its attempt, only
then. A commit that fewer replicas confirmed is sent again with the same token while the attempt
keeps its lease (finish.lua answers `already` when it is in, and commits it afresh on a new primary
that missed it). It needs N + 1 replicas to survive the loss of one (docs/security.md).

`record` is for tests only (`CHORDFLOW_TEST_ACK_LOG`): it appends every acknowledged write to a
JSONL file, fsync'd, for the failover harness's checker (tests/ha).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis

from orchestration.errors import NotReplicated
from orchestration.settings import Settings

_LOCK = threading.Lock()


def wait_args(settings: Settings) -> tuple[int, int] | None:
    """(replicas, timeout ms) for Redis's WAIT, or None when acknowledgements are off."""
    n = settings.replicas_ack
    return (n, settings.replicas_ack_timeout_ms) if n else None


def confirm(client: redis.Redis, mark_key: str, settings: Settings, what: str, tries: int = 3) -> None:
    """Wait until `settings.replicas_ack` replicas have every write this process made so far, or
    raise NotReplicated. WAIT counts what one connection wrote; a write of `mark_key` on the WAIT's
    own connection comes after the caller's writes in the replication stream, so it covers them."""
    wait = wait_args(settings)
    if wait is None:
        return
    replicas = 0
    for _ in range(tries):
        pipe = client.pipeline(transaction=False)
        pipe.incr(mark_key)
        pipe.wait(*wait)
        replicas = int(pipe.execute()[1])
        if replicas >= wait[0]:
            return
    raise NotReplicated(what, replicas, wait[0], wait[1] * tries)


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


__all__ = ["confirm", "record", "wait_args"]
