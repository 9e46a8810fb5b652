"""Leases of the attempts running in this process, renewed by one thread.

An attempt holds its lease from its token to its commit; while it is held, the reaper leaves
the stage alone. A lease that lapses (the worker died, or lost Redis) lets the reaper send the
stage again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from orchestration.engine.store import RunStore

from .context import StageContext

log = logging.getLogger("chordflow.worker")


class LeaseKeeper:
    """One thread per process renews the lease of every attempt running in it.

    A stage whose lease is lost, or cannot be renewed for a whole lease period (Redis
    unreachable), is told to stop: another worker may hold it by now, and its commit
    would be refused anyway.
    """

    def __init__(self, store: RunStore, interval_s: float):
        self._store, self._interval = store, interval_s
        self._held: dict[tuple[str, str, int | None, str], tuple[StageContext, float]] = {}
        self._limit_sets: dict[tuple[str, str, int | None, str], Sequence[str]] = {}  # limits' holds sets
        self._claimed: dict[tuple[str, str], set[int]] = {}  # items of a chunk not begun yet
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(
        self,
        run_id: str,
        stage_id: str,
        item: int | None,
        token: str,
        ctx: StageContext,
        holds: Sequence[str] = (),
    ) -> LeaseKeeper:
        """Keep the attempt's lease, and its places in the `holds` sets of its limits."""
        with self._lock:
            self._held[(run_id, stage_id, item, token)] = (ctx, time.monotonic())
            if holds:
                self._limit_sets[(run_id, stage_id, item, token)] = holds
            self._ensure_thread()
        return self

    def release(self, run_id: str, stage_id: str, item: int | None, token: str) -> None:
        with self._lock:
            self._held.pop((run_id, stage_id, item, token), None)
            self._limit_sets.pop((run_id, stage_id, item, token), None)

    def claim(self, run_id: str, stage_id: str, items: list[int]) -> None:
        """Keep the claims of a chunk's items (store.transitions.claim) until each begins or is unclaimed."""
        with self._lock:
            self._claimed.setdefault((run_id, stage_id), set()).update(items)
            self._ensure_thread()

    def unclaim(self, run_id: str, stage_id: str, *items: int) -> None:
        with self._lock:
            claimed = self._claimed.get((run_id, stage_id))
            if claimed is not None:
                claimed.difference_update(items)
                if not claimed:
                    del self._claimed[(run_id, stage_id)]

    def _ensure_thread(self) -> None:
        """Start the renewing thread if it is not running (the caller holds the lock)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, daemon=True, name="chordflow-leases")
            self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                held = list(self._held.items())
                claimed = [(key, sorted(items)) for key, items in self._claimed.items()]
            for (run_id, stage_id), items in claimed:
                try:
                    self._store.transitions.claim(run_id, stage_id, items)
                except Exception:  # noqa: BLE001  Redis unreachable: the claims lapse, the reaper resends
                    log.warning("could not keep the claims of %s/%s", run_id, stage_id)
            for key, (ctx, last_renewed) in held:
                try:
                    renewed = self._store.transitions.renew(*key, holds=self._limit_sets.get(key, ()))
                except Exception:  # noqa: BLE001  Redis unreachable: the lease lapses on Redis's clock
                    log.warning("could not renew the lease of %s/%s", key[0], key[1])
                    if time.monotonic() - last_renewed > self._store.settings.lease_s and self._holds(key):
                        log.warning("no renewal for a whole lease: stopping %s/%s", key[0], key[1])
                        ctx.cancel()
                        self.release(*key)
                    continue
                with self._lock:
                    if key not in self._held:  # the attempt ended while we renewed
                        continue
                    if renewed:
                        self._held[key] = (ctx, time.monotonic())
                        continue
                log.warning("lease lost for %s/%s; stopping the stage", key[0], key[1])
                ctx.cancel()
                self.release(*key)

    def _holds(self, key: tuple[str, str, int | None, str]) -> bool:
        with self._lock:
            return key in self._held
