"""The hook sender: delivers the events of the hooks outbox, off every stage's path.

The scripts that commit a transition add its event to the Redis stream `Keys.hooks()`
(one field `e`, the event's JSON) when someone listens. Every worker's main process runs
one `HookSender`, a consumer of the stream's group `senders`. For each entry it:

0. for a run's end (`run_complete`): records it for its pipeline and assets and submits the
   registered pipelines the success triggers, once per upstream run (`triggers.RunEnds`);
1. runs the Python hooks registered for the entry's kind in this process, one at a time,
   each in a helper thread it waits for at most `settings.hook_timeout_s` (a hook still
   running then is left to finish on its own and a warning names it; a hook that raises
   is logged and ignored);
2. hands the entry to every webhook of the run (from the run's stored graph; none if the
   run is gone; for `pipeline_stale`, the registered pipeline's) that wants it, to the
   per-endpoint queues of `deliveries.Endpoints` (a bounded pool, one thread at a time per
   URL, a circuit breaker per URL), and goes on with the next entry at once: a dead
   endpoint delays its own queue only, never a trigger or another endpoint. Each POST is
   retried with backoff on network errors, timeouts, 5xx, 408 and 429, bounded by the
   webhook's own timeout and the whole delivery by `settings.webhook_total_s`; a delivery
   that still fails is logged, with any user:password of its URL masked;
3. acknowledges and deletes the entry once every webhook of it is done (at once if none).

Delivery is at least once: an entry stays pending on the sender that read it until that
sender has delivered it; a sender that dies leaves its entries pending, and another
worker's sender takes them over (XAUTOCLAIM) once they have been idle for
`settings.hook_claim_idle_s`. A live sender keeps the entries it holds from looking idle
(XCLAIM ... JUSTID every quarter of that time) however long their delivery takes, so a
slow webhook is not delivered twice. An event can still reach a hook twice when its
sender dies after delivering it and before acknowledging it.

Order: one sender delivers the entries it reads in stream order to each endpoint (endpoints
do not wait for each other). With several workers the entries are shared among their senders, and an entry taken over from a dead sender comes
late, so the order in which hooks see events is guaranteed only per sender, not across
workers.

Python hooks run in the worker's main process, the one that also feeds the Celery pool:
keep them short, or hand long work to a queue of your own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from orchestration.engine import hooks, triggers
from orchestration.engine.deliveries import Delivery, Endpoints
from orchestration.engine.hook_stream import HookEntry
from orchestration.engine.store import RunStore, connect
from orchestration.errors import RunNotFound
from orchestration.settings import Settings

log = logging.getLogger("chordflow.hooks")
GROUP = "senders"
BATCH = 16
BLOCK_MS = 1000


class HookSender(threading.Thread):
    """One per worker main process: reads the hooks outbox and delivers each entry."""

    def __init__(self, settings: Settings, consumer: str, store: RunStore | None = None):
        super().__init__(daemon=True, name="chordflow-hooks")
        self.settings, self.consumer = settings, consumer
        self.stop = threading.Event()
        self._store = store
        self._group_ready = False
        self._lock = threading.Lock()  # guards _inflight: webhook threads finish entries too
        self._inflight: dict[str, int] = {}  # id read and not yet acknowledged -> deliveries left
        self._endpoints: Endpoints | None = None
        self._touched = 0.0
        self._next_claim = 0.0
        self.touch_every = max(0.5, settings.hook_claim_idle_s / 4)
        self._run_ends: triggers.RunEnds | None = None
        triggers.announce_run_ends()  # in the worker's main process, before it forks its pool

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore(connect(self.settings), self.settings)
        return self._store

    @property
    def endpoints(self) -> Endpoints:
        """The webhook delivery pool (its threads start with the first webhook)."""
        if self._endpoints is None:
            self._endpoints = Endpoints(self.settings)
        return self._endpoints

    @property
    def run_ends(self) -> triggers.RunEnds | None:
        """What a run's end does besides hooks (record it, fire triggers); None on a store that is
        not the Redis run store (tests that give the sender a stand-in)."""
        store = self.store
        if self._run_ends is None and isinstance(store, RunStore):
            self._run_ends = triggers.RunEnds(store, self.settings)
        return self._run_ends

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                self.tick()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - logged (masked, with its traceback), retried
                # Redis unreachable, the stream deleted under us, a bug: never let the thread die.
                failures += 1
                self._group_ready = False
                log.warning(
                    "hook sender: %s; retrying%s",
                    hooks.mask(f"{type(exc).__name__}: {exc}"),
                    _traceback(exc) if failures == 1 else "",
                )
                self.stop.wait(min(5.0, 0.25 * 2 ** min(failures, 5)))

    def tick(self, block_ms: int = BLOCK_MS) -> int:
        """Deliver what is due: entries left idle by dead senders, then new ones (waiting up to
        `block_ms` for some). Returns how many entries were handled."""
        self._ensure_group()
        self._touch()
        handled = 0
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + min(10.0, self.touch_every)
            handled += self._deliver_all(self._reclaim())
        self._check_stale()
        return handled + self._deliver_all(self.store.hooks.read_hooks(GROUP, self.consumer, BATCH, block_ms))

    def _check_stale(self) -> None:
        """Now and then, alert stale pipelines (`triggers.RunEnds.check_stale`); never stops delivery."""
        try:
            if self.run_ends is not None:
                self.run_ends.check_stale()
        except Exception as exc:  # noqa: BLE001 - logged; hooks go on being delivered
            log.warning("hook sender: looking for stale pipelines failed: %s", hooks.mask(f"{exc}"))

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        self.store.hooks.create_hook_group(GROUP)
        self._group_ready = True

    def _reclaim(self) -> list[HookEntry]:
        """Take over the entries pending on other senders for longer than the claim time."""
        idle_ms = int(self.settings.hook_claim_idle_s * 1000)
        # at most 10 pages of BATCH per tick
        claimed = self.store.hooks.claim_idle_hooks(GROUP, self.consumer, idle_ms, BATCH, pages=10)
        for entry_id, _fields in claimed:
            if entry_id is not None:
                log.info(
                    "hook sender %s: took over event %s from a sender that went quiet",
                    self.consumer,
                    entry_id,
                )
        # Drop consumers of dead senders from the group: nothing pending and quiet for long.
        quiet_ms = max(3600.0, 10 * self.settings.hook_claim_idle_s) * 1000
        self.store.hooks.forget_hook_consumers(GROUP, keep=self.consumer, quiet_ms=quiet_ms)
        return claimed

    def _deliver_all(self, entries: Sequence[HookEntry]) -> int:
        """Deliver each entry: its triggers and Python hooks now, its webhooks handed to the pool;
        an entry is acknowledged when the last of its webhooks is done (at once when it has none)."""
        handled = 0
        for entry_id, fields in entries:
            if entry_id is None:
                continue
            with self._lock:
                if entry_id in self._inflight:  # taken over from ourselves: still being delivered
                    continue
                self._inflight[entry_id] = 1  # this loop's own share, given up below
            event = _event(entry_id, fields)
            try:
                if event is not None:
                    # A Redis error propagates: the entry stays pending and is taken over later.
                    self.deliver(event, entry_id)
            except BaseException:
                with self._lock:
                    self._inflight.pop(entry_id, None)
                raise
            self._done(entry_id)
            handled += 1
        return handled

    def _done(self, entry_id: str) -> None:
        """One share of the entry's delivery is done; the last one acknowledges it."""
        with self._lock:
            left = self._inflight.get(entry_id, 0) - 1
            if left > 0:
                self._inflight[entry_id] = left
                return
            self._inflight.pop(entry_id, None)
        try:
            self.store.hooks.ack_hook(GROUP, entry_id)
        except Exception as exc:  # noqa: BLE001 - left pending: delivered again later (at least once)
            log.warning("hook sender: could not acknowledge event %s: %s", entry_id, hooks.mask(f"{exc}"))

    # -- one event -------------------------------------------------------------------------
    def deliver(self, event: dict[str, Any], entry_id: str | None = None) -> None:
        """Run the Python hooks of the event's kind, then queue it for the run's webhooks that want
        it (`deliveries.Endpoints`). For an outbox entry (`entry_id`), each queued webhook gives up
        one share of the entry when it is done (the last acknowledges it, `_done`); without one,
        this waits for the webhooks before it returns.

        A run's end first goes to `run_ends` (record it, submit what it triggers); a Redis error
        there propagates, so the entry stays pending and is delivered again."""
        kind, run_id = str(event.get("kind")), str(event.get("run_id"))
        if kind == "run_complete" and self.run_ends is not None:
            self.run_ends.handle(event)
        for fn in hooks.registered(kind):
            if triggers.is_internal(fn):
                continue
            name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

            def call(fn: hooks.Hook = fn) -> None:
                fn(dict(event))

            error, finished = self._bounded(call, self.settings.hook_timeout_s, f"hook {name}")
            if not finished:
                log.warning(
                    "hook %s for %s of run %s still running after %gs; no longer waited for",
                    name,
                    kind,
                    run_id,
                    self.settings.hook_timeout_s,
                )
            elif error is not None:
                log.error(
                    "hook %s for %s of run %s raised; ignored: %s%s",
                    name,
                    kind,
                    run_id,
                    hooks.mask(f"{type(error).__name__}: {error}"),
                    _traceback(error),
                )
        try:
            if kind == "pipeline_stale":  # no run: the registered pipeline's webhooks
                ends = self.run_ends
                webhooks = triggers.pipeline_webhooks(ends.store, str(event.get("pipeline"))) if ends else ()
            else:
                webhooks = self.store.runs.graph(run_id).webhooks
        except RunNotFound:
            return
        queued: list[Any] = []
        for webhook in webhooks:
            if not hooks.wants(webhook, event):
                continue
            refused = hooks.refusal(webhook.url)
            if refused is not None:  # validation refuses it; a run stored before that did not
                log.error(
                    "webhook %s for %s of run %s refused: %s",
                    hooks.mask(webhook.url),
                    kind,
                    run_id,
                    refused,
                )
                continue
            queued.append(webhook)
        if entry_id is not None:
            with self._lock:  # one share per webhook, each given up by its delivery's `done`
                self._inflight[entry_id] = self._inflight.get(entry_id, 0) + len(queued)
            for webhook in queued:
                self.endpoints.submit(Delivery(webhook, event, partial(self._done, entry_id)))
            return
        delivered = threading.Semaphore(0)
        for webhook in queued:
            self.endpoints.submit(Delivery(webhook, event, delivered.release))
        for _ in queued:
            delivered.acquire()

    def _bounded(
        self, fn: Callable[[], None], limit_s: float, what: str
    ) -> tuple[BaseException | None, bool]:
        """Run `fn` in a helper thread and wait for it at most `limit_s`, keeping the entries we
        hold from looking idle meanwhile. Returns (what it raised, whether it finished)."""
        outcome: dict[str, BaseException] = {}

        def target() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the sender, never raised
                outcome["error"] = exc

        helper = threading.Thread(target=target, daemon=True, name=f"chordflow-{what}")
        helper.start()
        deadline = time.monotonic() + limit_s
        while True:
            self._touch()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            helper.join(min(remaining, self.touch_every))
            if not helper.is_alive():
                break
        return outcome.get("error"), not helper.is_alive()

    def _touch(self) -> None:
        """Reset the idle time of the entries we hold (in the loop, or queued for webhooks), so no
        other sender takes them over."""
        if not self._inflight or time.monotonic() - self._touched < self.touch_every:
            return
        self._touched = time.monotonic()
        try:
            with self._lock:
                held = list(self._inflight)
            self.store.hooks.hold_hooks(GROUP, self.consumer, held)
        except Exception:
            log.debug("hook sender: could not touch pending events", exc_info=True)


def _event(entry_id: str, fields: dict[str, str] | None) -> dict[str, Any] | None:
    try:
        event = json.loads((fields or {})["e"])
        if isinstance(event, dict) and "kind" in event:
            return event
    except (KeyError, TypeError, ValueError):
        pass
    log.error("hook sender: entry %s is not an event (%s); dropped", entry_id, hooks.mask(repr(fields)[:200]))
    return None


def _traceback(exc: BaseException) -> str:
    """`exc`'s traceback to end a log line, any user:password of a URL in it masked (a log
    handler's own `exc_info` formatting would print them)."""
    return "\n" + hooks.mask("".join(traceback.format_exception(exc)).rstrip())


__all__ = ["GROUP", "HookSender"]
