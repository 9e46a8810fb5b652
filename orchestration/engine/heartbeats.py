"""The fleet as the store sees it: the workers' heartbeats (`keys.workers`), the lock of the one
worker that reaps at a time, and which Redis process answers as primary.

A heartbeat is stamped with Redis's clock, so a worker is live by the clock every machine agrees
on. `Fleet` is the run store's `fleet` (`store.RunStore`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.lock import Lock

from orchestration.engine.keys import Keys
from orchestration.settings import Settings


class Fleet:
    """Workers' heartbeats, the reaper's lock, the primary's identity; `clock` is Redis's (epoch s)."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys, clock: Callable[[], float]):
        self._r: Any = client
        self.settings = settings
        self.keys = keys
        self._clock = clock

    # -- workers' heartbeats ----------------------------------------------------------------------
    def publish_worker(self, hostname: str, info: Mapping[str, Any]) -> None:
        """A worker's heartbeat: its queues, resources and stage types, stamped with Redis's clock."""
        self._r.hset(self.keys.workers(), hostname, json.dumps({**info, "seen": self._clock()}))

    def remove_worker(self, hostname: str) -> None:
        """A worker that stops takes its heartbeat with it."""
        self._r.hdel(self.keys.workers(), hostname)

    def live_workers(self) -> dict[str, dict[str, Any]]:
        """Hostname -> heartbeat of the workers seen within `settings.worker_ttl_s`."""
        now = self._clock()
        out = {}
        for host, raw in self._r.hgetall(self.keys.workers()).items():
            info = json.loads(raw)
            if now - info.get("seen", 0) <= self.settings.worker_ttl_s:
                out[host] = info
        return out

    # -- the reaper ---------------------------------------------------------------------------------
    def reaper_lock(self, timeout_s: float) -> Lock:
        """The lock held by the one worker that reaps at a time (not taken yet; never blocks)."""
        return Lock(self._r, self.keys.reaper_lock(), timeout=timeout_s, blocking=False, thread_local=False)

    def primary_identity(self) -> str:
        """Which Redis process answers, as primary: its run id and replication id change when it
        restarts or another one is promoted (the reaper then pauses one lease)."""
        info = self._r.info("server")
        return f"{info.get('run_id')}/{self._r.info('replication').get('master_replid')}"
