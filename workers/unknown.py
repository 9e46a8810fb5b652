"""Stage messages of a type this worker does not serve.

Celery rejects (drops) a message whose task name it has not registered and sends
`task_unknown`; left there, a stage of a type no worker serves (a run submitted with
`--no-check` / `Client.submit(..., check_types=False)`) stays `queued` and its run
`running` forever. This handler, in the worker's consumer (its main process), looks at
the live workers:

- if none serves the stage's type on the stage's queue, it fails the stage with an
  `UnservedStageType` error (the run then goes on, or ends, like after any failure);
- if the pipeline named the type by its `module:function` reference (no type check made
  it canonical), it sends the message again at once under the name its workers registered;
- if another live worker serves it there (this one only lacks it), it puts the message
  back after REDELIVERY_DELAY_S, through the delay set the workers drain (Redis's clock),
  so that worker can take it, and a message that worker is too busy to take does not
  circle between the workers that lack its type. It waits there like any queued stage:
  until that worker takes it, or stops announcing the type (its heartbeat lapses after
  CHORDFLOW_WORKER_TTL_S), and then it fails as unserved.

Nothing here raises into Celery's consumer: every error is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals
from kombu.exceptions import KombuError

from orchestration.engine.compiler import stage_signature
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.registry import task_name
from orchestration.engine.stage_message import MalformedMessage, StageMessage
from orchestration.engine.store import RunStore, connect
from orchestration.errors import RunNotFound
from orchestration.settings import Settings
from orchestration.states import State

log = logging.getLogger("chordflow.worker")

TASK_PREFIX = task_name("")
REDELIVERY_DELAY_S = 1.0
WAITING = (State.QUEUED, State.RETRYING, State.RUNNING)  # in any other state it has ended: nothing to do


def install_unknown_task_handler(app: Celery, settings: Settings) -> UnknownTaskHandler:
    """Connect `task_unknown` for `app`'s worker (the handler lives as long as the app)."""
    handler = UnknownTaskHandler(app, settings)
    # the signal holds the handler weakly: the app keeps it alive
    app.chordflow_unknown_task_handler = handler  # type: ignore[attr-defined]
    signals.task_unknown.connect(handler, weak=True)
    return handler


class UnknownTaskHandler:
    def __init__(self, app: Celery, settings: Settings):
        self.app, self.settings = app, settings
        self._own: tuple[RunStore, Dispatcher] | None = None

    def __call__(
        self,
        sender: Any = None,
        name: Any = None,
        id: Any = None,
        message: Any = None,
        exc: Any = None,
        **_: Any,
    ) -> None:
        try:
            if sender is not None and getattr(sender, "app", None) is not self.app:
                return  # another app's consumer (the signal is process-wide)
            if isinstance(name, str) and name.startswith(TASK_PREFIX):
                self.handle(name, id, message)
        except Exception:
            log.exception("could not act on the unknown stage message %s (%s)", id, name)

    # -- the decision ------------------------------------------------------------------------------
    def handle(self, name: str, task_id: Any, message: Any) -> str:
        """What was done with one message of an unregistered stage task; for the log and tests.

        Only the run's stored graph decides (the stage's type and queue), as for any stage message;
        the task name only said that this worker has no task for it."""
        try:
            parsed = _stage_message(message)
        except MalformedMessage as exc:
            log.error("dropping malformed stage message %s for %s: %s", task_id, name, exc)
            return "dropped: malformed"
        run_id, stage_id = parsed.run_id, parsed.stage_id
        each = [parsed.one(i) for i in parsed.items] if parsed.count > 1 else [parsed]
        store, dispatcher = self._parts()
        try:
            node = store.runs.graph(run_id).node(stage_id)
        except (RunNotFound, KeyError):
            log.error("dropping %s: no stage %s in run %s", task_id, stage_id, run_id)
            return "dropped: unknown run or stage"
        if store.runs.states(run_id).get(stage_id) not in WAITING:
            return "dropped: the stage has ended"
        served_as, hosts = served_by(store.fleet.live_workers(), node.type, node.queue)
        if served_as is None:
            why = (
                f"no live worker serves stage type '{node.type}' on queue '{node.queue}'; "
                "start one with `chordflow worker --import MODULE`"
            )
            failed = dispatcher.fail_stage(
                run_id, stage_id, {"type": "UnservedStageType", "message": why, "retryable": False}
            )
            log.error("stage %s/%s: %s%s", run_id, stage_id, why, "" if failed else " (it had already ended)")
            return State.FAILED if failed else "dropped: the stage has ended"
        if name != task_name(served_as):
            # Named by its module:function reference: send it under the name its workers registered.
            renamed = node.model_copy(update={"type": served_as})
            with self.app.producer_or_acquire() as producer:
                for one in each:
                    stage_signature(one, renamed).apply_async(producer=producer)
            log.warning(
                "stage %s/%s: type %r sent again as %r, for %s",
                run_id,
                stage_id,
                node.type,
                served_as,
                ", ".join(hosts),
            )
            return "sent again"
        # Served by another live worker on this queue, not by this one: back to the queue after a
        # pause (through the delay set the workers drain), so while that worker is busy the message
        # does not circle between the workers that lack its type. It waits like any queued stage,
        # until that worker takes it or stops announcing the type (then it fails as unserved).
        for one in each:  # a chunk of fan-out items goes back one item per message
            store.outbox.delay(one.payload(), REDELIVERY_DELAY_S)
        log.warning(
            "stage %s/%s: type %r is not served here but by %s; queued again in %gs",
            run_id,
            stage_id,
            served_as,
            ", ".join(hosts),
            REDELIVERY_DELAY_S,
        )
        return "queued again"

    def _parts(self) -> tuple[RunStore, Dispatcher]:
        """The store and dispatcher of this process: the app's own (so a failure here finishes the run
        as a stage task's would), else a pair made once."""
        env = getattr(self.app, "chordflow_env", None)
        if env is not None:
            worker_env = env()
            return worker_env.store, worker_env.dispatcher
        if self._own is None:
            store = RunStore(connect(self.settings), self.settings)
            self._own = (store, Dispatcher(self.app, store))
        return self._own


def served_by(
    workers: Mapping[str, Mapping[str, Any]], type_name: str, queue: str
) -> tuple[str | None, list[str]]:
    """(the registered name of `type_name` among the live workers on `queue`, the hosts serving it);
    (None, []) when no live worker serves it there. `type_name` may be a name or a module:function."""
    found: str | None = None
    hosts = []
    for host, info in sorted(workers.items()):
        if queue not in (info.get("queues") or []):
            continue
        for described in info.get("types") or []:
            if type_name in (described.get("name"), described.get("ref")):
                found = found or described.get("name") or type_name
                hosts.append(host)
                break
    return found, hosts


def _stage_message(message: Any) -> StageMessage:
    """The stage message of a Celery message (protocol 2 body: args, kwargs, embed); MalformedMessage
    when it is not one."""
    try:
        body = message.decode()
    except (KombuError, AttributeError, ValueError, TypeError) as exc:
        raise MalformedMessage(f"the body cannot be decoded: {exc}") from None
    if not (isinstance(body, (list, tuple)) and len(body) >= 2):
        raise MalformedMessage("the body is not [args, kwargs, embed]")
    return StageMessage.parse(body[0], body[1])


__all__ = ["UnknownTaskHandler", "install_unknown_task_handler", "served_by"]
