"""A stage task's state, as Flower shows it: the outcome of the attempt the task ran.

`execute` returns what happened as text, for the worker log. After the attempt's commit the
task ends by that outcome: a failed attempt (failed, or failed with its fallback used) raises
`AttemptFailed` (Celery's FAILURE, with the error), an attempt that will be tried again raises
Celery's `Retry` (RETRY, with the error); anything else returns (SUCCESS). The message is
acknowledged either way, as before (acks_late, task_acks_on_failure_or_timeout): raising
changes what Flower shows, never whether the message is redelivered. `AttemptFailed` is in
the task's `throws`, so Celery logs it as one INFO line, without a traceback: a stage failing
is the stage's news, recorded in the run, not the worker's.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import Retry
from celery.worker.request import Request

from orchestration.engine.registry import StageType
from orchestration.engine.stage_message import StageMessage
from orchestration.states import State

from .livelog import last_ending

log = logging.getLogger("chordflow.worker")

FAILED = (State.FAILED, State.FALLBACK, "refused")
AGAIN = (State.RETRYING, "not committed", "redis error")


class AttemptFailed(Exception):
    """The attempt this task ran failed: its error, `Type: message`."""


def task_outcome(outcome: str) -> str:
    """Return `outcome`, or raise for a failed attempt (AttemptFailed) or a retried one (Retry)."""
    ending, error = last_ending()
    # the error kept by this attempt's commit (not one left by an earlier task of this thread)
    ours = error is not None and bool(ending) and outcome.startswith(ending)
    detail = f"{error.get('type')}: {error.get('message', '')}"[:1000] if error and ours else outcome
    if outcome.startswith(FAILED):
        raise AttemptFailed(detail)
    if outcome.startswith(AGAIN):
        raise Retry(outcome, exc=AttemptFailed(detail))
    return outcome


class StageRequest(Request):
    """A stage task's request (Celery's custom request class): it tells the pool process whether
    this worker sends task events (Flower turns them on at run time, in the worker's main process),
    so that the process sends them for the stages it runs in place (`InPlaceEvents`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        eventer = self._eventer  # enabled for the worker's heartbeats; task events are the group 'task'
        self._request_dict["chordflow_events"] = bool(
            eventer is not None and eventer.enabled and (not eventer.groups or "task" in eventer.groups)
        )


class InPlaceEvents:
    """Celery's task events for a stage run in place (workers/execution.py), which no message of its
    own announces: Flower lists it as a task of its type (id `<message's task id>+<stage id>`, the
    message's task as its parent), started, then succeeded or failed, as if it had come alone."""

    def __init__(self, app: Celery, hostname: str, parent_id: str):
        self.app, self.hostname, self.parent_id = app, hostname, parent_id
        self._started: dict[str, float] = {}

    def started(self, stage_type: StageType, message: StageMessage) -> None:
        uuid = f"{self.parent_id}+{message.stage_id}"
        self._started[uuid] = time.monotonic()
        self._send(
            "task-received",
            uuid=uuid,
            name=stage_type.task_name,
            args=repr(message.args),
            kwargs="{}",
            root_id=self.parent_id,
            parent_id=self.parent_id,
            retries=0,
            eta=None,
            expires=None,
        )
        self._send("task-started", uuid=uuid, pid=os.getpid())

    def ended(self, message: StageMessage, outcome: str) -> None:
        uuid = f"{self.parent_id}+{message.stage_id}"
        runtime = time.monotonic() - self._started.pop(uuid, time.monotonic())
        if outcome.startswith(FAILED):
            self._send("task-failed", uuid=uuid, exception=repr(AttemptFailed(outcome)), traceback="")
        elif outcome.startswith(AGAIN):
            self._send("task-retried", uuid=uuid, exception=repr(AttemptFailed(outcome)), traceback="")
        else:
            self._send("task-succeeded", uuid=uuid, result=repr(outcome), runtime=runtime)

    def _send(self, kind: str, **fields: Any) -> None:
        try:
            with self.app.events.default_dispatcher(hostname=self.hostname) as dispatcher:
                dispatcher.send(kind, **fields)
        except Exception as exc:  # noqa: BLE001  monitoring never fails a stage
            log.debug("task event %s not sent: %s", kind, exc)
