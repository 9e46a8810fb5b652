"""The consumer's guard: a malformed message is logged and dropped before Celery reads it, and a
broker fault is waited out with backoff.

Celery's consumer hands each message to the task's strategy, which builds a `Request` from its
headers and body. A message that is not what Celery itself would send (a body that is a JSON
object or a two-item list, a header of the wrong type, no task id, a body that is not JSON)
makes that raise something other than `InvalidTaskError`, which Celery calls an "Unrecoverable
error": the worker restores the message and exits, and every worker that takes the message next
exits too. Here every message is checked first (and a stage task's arguments by the one parser
of them, `StageMessage.parse`); a bad one is logged with what is wrong, acknowledged (dropped),
and the consumer goes on. Anything the strategy still raises, except a broker connection error
(which the consumer rides out by reconnecting), is logged and the message dropped the same way.

A broker fault the transport counts as a connection error (engine/broker.py: refused, reset,
READONLY, UNBLOCKED, LOADING, OOM, MASTERDOWN) makes Celery's consumer restart its connection at
once, up to 5 times a second; here each restart waits first, 0.1 s doubling to BACKOFF_MAX_S
(back to 0.1 s after FAULT_MEMORY_S without a fault), so a Redis that stays read-only or down is
asked a few times a second at most, and a worker reconnects within BACKOFF_MAX_S of its return.

Installed by `install(app)`, which makes the worker's consumer `GuardedConsumer`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown
from kombu.message import Message

from orchestration.engine.registry import task_name
from orchestration.engine.stage_message import MalformedMessage, StageMessage

log = logging.getLogger("chordflow.worker")

STAGE_PREFIX = task_name("")
_TEXT_HEADERS = ("id", "task", "root_id", "parent_id", "group", "origin", "shadow", "argsrepr", "kwargsrepr")
_TIME_HEADERS = ("eta", "expires")
_EMBED_LISTS = ("callbacks", "errbacks", "chain")
_SHOWN = 200  # characters of a bad value in the log line
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0  # a failover's new primary is found within this of its announcement
FAULT_MEMORY_S = 30.0


def install(app: Celery) -> None:
    """Make `app`'s workers check every message before Celery builds its request."""
    app.conf.worker_consumer = f"{__name__}:GuardedConsumer"


def problem(message: Message) -> str | None:
    """What is wrong with `message` as a Celery task message (protocol 2, JSON), or None."""
    headers = message.headers
    if not isinstance(headers, Mapping):
        return f"its headers are {type(headers).__name__}, not a mapping"
    for name in ("id", "task"):
        if not isinstance(headers.get(name), str) or not headers[name]:
            return f"its header {name!r} is {_short(headers.get(name))}, not a non-empty string"
    for name in _TEXT_HEADERS:
        if headers.get(name) is not None and not isinstance(headers[name], str):
            return f"its header {name!r} is {_short(headers[name])}, not a string"
    for name in _TIME_HEADERS:
        value = headers.get(name)
        if value is not None and not _iso_time(value):
            return f"its header {name!r} is {_short(value)}, not an ISO 8601 time"
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        return f"its header 'retries' is {_short(retries)}, not a count"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limits)
    ):
        return f"its header 'timelimit' is {_short(limits)}, not [soft, hard]"
    try:
        body = message.decode()
    except Exception as exc:  # noqa: BLE001 - whatever the serializer says, the body is unreadable
        return f"its body cannot be decoded ({type(exc).__name__}: {_short(str(exc))})"
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return f"its body is {_short(body)}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if (
        not isinstance(args, list | tuple)
        or not isinstance(kwargs, Mapping)
        or not isinstance(embed, Mapping)
    ):
        return f"its body is {_short(body)}, not [list, object, object]"
    for name in _EMBED_LISTS:
        if embed.get(name) is not None and not isinstance(embed[name], list | tuple):
            return f"its body's {name!r} is {_short(embed[name])}, not a list"
    if embed.get("chord") is not None and not isinstance(embed["chord"], Mapping):
        return f"its body's 'chord' is {_short(embed['chord'])}, not an object"
    if headers["task"].startswith(STAGE_PREFIX):
        try:
            StageMessage.parse(args, kwargs)
        except MalformedMessage as exc:
            return str(exc)
    return None


def _iso_time(value: Any) -> bool:
    from celery.utils.time import maybe_iso8601

    try:
        return isinstance(value, str) and maybe_iso8601(value) is not None
    except (ValueError, TypeError, OverflowError):
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _describe(message: Message) -> str:
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    task, task_id = headers.get("task"), headers.get("id")
    queue = (message.delivery_info or {}).get("routing_key")
    return f"message {_short(task_id)} for {_short(task)} on queue {queue!r}"


def drop(message: Message, why: str, connection_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Log what is wrong with `message` and acknowledge it (it is not seen again)."""
    log.error("dropped malformed %s: %s", _describe(message), why)
    message.ack_log_error(log, connection_errors)


class GuardedConsumer(Consumer):
    """Celery's consumer with every task message checked before its strategy sees it, and a
    backoff before each reconnection."""

    _faults = 0
    _last_fault = float("-inf")

    def ensure_connected(self, conn: Any) -> Any:
        """Connect, retrying for as long as it takes: every BACKOFF_MAX_S at most (Celery's own
        loop waits 2, 4, 6 ... 30 s and ends the worker after 100 tries)."""

        def errback(exc: BaseException, interval: float) -> None:
            log.warning("broker unreachable (%s); retrying in %.1fs", _short(str(exc)), interval)

        conn = conn.ensure_connection(
            errback,
            None,
            interval_start=BACKOFF_FIRST_S,
            interval_step=BACKOFF_FIRST_S * 2,
            interval_max=BACKOFF_MAX_S,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn

    def on_connection_error_before_connected(self, exc: BaseException) -> None:
        super().on_connection_error_before_connected(exc)
        self._back_off(exc)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        super().on_connection_error_after_connected(exc)
        self._back_off(exc)

    def _back_off(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_fault > FAULT_MEMORY_S:
            self._faults = 0
        self._faults += 1
        self._last_fault = now
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(self._faults - 1, 16))
        log.warning(
            "broker fault (%s: %s); reconnecting in %.1fs", type(exc).__name__, _short(str(exc)), delay
        )
        time.sleep(delay)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], Any]:
        handler = super().create_task_handler(*args, **kwargs)
        errors = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message: Message) -> Any:
            try:
                why = problem(message)
            except Exception as exc:  # noqa: BLE001 - a check that fails is a message we cannot read
                why = f"it cannot be checked ({type(exc).__name__}: {_short(str(exc))})"
            if why is not None:
                return drop(message, why, errors)
            try:
                return handler(message)
            except errors:
                raise  # the broker's fault: the consumer reconnects, the message is redelivered
            except Exception:
                log.exception("dropped %s: Celery could not take it", _describe(message))
                if not message.acknowledged:
                    message.ack_log_error(log, errors)
                return None

        return on_task_received
