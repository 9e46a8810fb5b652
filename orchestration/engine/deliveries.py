"""Webhook deliveries, isolated per endpoint: one FIFO queue per URL, served by at most one thread
at a time out of a bounded pool, with a circuit breaker per URL.

The hook sender (hook_sender.py) hands each webhook delivery of an event here and goes on with the
next event at once, so a dead or slow endpoint delays only its own queue: never a trigger, a run's
record, a Python hook, nor another endpoint (as long as fewer endpoints than threads hang at once).

- One thread per URL at a time keeps each endpoint's events in the order the sender read them.
- After `webhook_breaker_failures` deliveries to a URL failed in a row (each after its retries),
  its breaker opens: for `webhook_breaker_cooloff_s` its deliveries are skipped and logged, not
  tried; the first delivery after that is tried again (one success closes the breaker).
- A URL's queue holds at most `webhook_queue_cap` deliveries; one more is dropped and logged.

Each delivery ends (delivered, failed, skipped or dropped) by calling its `done`, which the sender
uses to acknowledge the event once every webhook of it is done (at least once: an event whose
worker dies with deliveries queued stays pending and another worker delivers it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestration.engine import hooks
from orchestration.language.options import Webhook
from orchestration.settings import Settings

log = logging.getLogger("chordflow.hooks")
Post = Callable[[Webhook, Mapping[str, Any], float], None]


@dataclass
class Delivery:
    webhook: Webhook
    event: Mapping[str, Any]
    done: Callable[[], None]

    def names(self) -> tuple[str, str, str]:
        """(masked URL, event kind, run id), as the log lines say them."""
        return hooks.mask(self.webhook.url), str(self.event.get("kind")), str(self.event.get("run_id"))


@dataclass
class Breaker:
    """One URL's record: failures in a row, and until when (monotonic s) its deliveries are skipped."""

    failures: int = 0
    open_until: float = 0.0
    skipped: int = 0  # deliveries skipped while it was open


class Endpoints:
    """Deliveries, one queue per URL, served by a bounded pool of daemon threads (started at once)."""

    def __init__(self, settings: Settings, post: Post | None = None):
        self.settings, self._post = settings, post
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Delivery]] = {}
        self._ready: deque[str] = deque()  # URLs with deliveries queued and no thread on them
        self._active: set[str] = set()  # URLs in _ready or being served
        self.breakers: dict[str, Breaker] = {}
        for n in range(max(1, settings.webhook_threads)):
            threading.Thread(target=self._serve, daemon=True, name=f"chordflow-webhooks-{n}").start()

    def submit(self, delivery: Delivery) -> None:
        """Queue `delivery` behind its URL's earlier ones (or drop it when that queue is full)."""
        url = delivery.webhook.url
        with self._cond:
            queue = self._queues.setdefault(url, deque())
            full = len(queue) >= self.settings.webhook_queue_cap
            if not full:
                queue.append(delivery)
                if url not in self._active:
                    self._active.add(url)
                    self._ready.append(url)
                    self._cond.notify()
        if full:
            masked, kind, run_id = delivery.names()
            log.error(
                "webhook %s for %s of run %s dropped: %d deliveries already wait for it",
                masked,
                kind,
                run_id,
                self.settings.webhook_queue_cap,
            )
            delivery.done()

    # -- the threads -------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._ready:
                    self._cond.wait()
                url = self._ready.popleft()
                delivery = self._queues[url].popleft()
            try:
                self._deliver(delivery)
            except Exception:  # a bug here must not end the thread: logged, and the event acked
                log.exception("webhook delivery failed unexpectedly")
            finally:
                delivery.done()
                with self._cond:
                    if self._queues[url]:
                        self._ready.append(url)
                        self._cond.notify()
                    else:
                        del self._queues[url]
                        self._active.discard(url)

    def _deliver(self, delivery: Delivery) -> None:
        masked, kind, run_id = delivery.names()
        breaker = self.breakers.setdefault(delivery.webhook.url, Breaker())
        if breaker.open_until > time.monotonic():
            breaker.skipped += 1
            log.warning(
                "webhook %s for %s of run %s skipped: its circuit is open after %d failures in a row "
                "(%d skipped so far; tried again in %.0fs)",
                masked,
                kind,
                run_id,
                breaker.failures,
                breaker.skipped,
                breaker.open_until - time.monotonic(),
            )
            return
        try:
            post = self._post or hooks.post  # read at call time: tests replace hooks.post
            post(delivery.webhook, delivery.event, self.settings.webhook_total_s)
        except Exception as exc:  # noqa: BLE001 - a failed delivery is logged and counted, never raised
            breaker.failures += 1
            log.error(
                "webhook %s for %s of run %s failed after retries: %s",
                masked,
                kind,
                run_id,
                hooks.mask(f"{type(exc).__name__}: {exc}"),
            )
            if breaker.failures >= self.settings.webhook_breaker_failures:
                cooloff = self.settings.webhook_breaker_cooloff_s
                breaker.open_until = time.monotonic() + cooloff
                breaker.skipped = 0
                log.error(
                    "webhook %s failed %d times in a row: its circuit opens, its deliveries are "
                    "skipped for %gs",
                    masked,
                    breaker.failures,
                    cooloff,
                )
            return
        if breaker.failures:
            log.info(
                "webhook %s answers again after %d failures: its circuit closes", masked, breaker.failures
            )
        breaker.failures, breaker.open_until = 0, 0.0
