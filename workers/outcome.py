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

from celery.exceptions import Retry

from orchestration.states import State

from .livelog import last_ending

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
