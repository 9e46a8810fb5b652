"""The result backend of a fleet that keeps no Celery results (stage tasks ignore theirs: a run's
state is in the run store): Celery's own disabled backend, except that it answers the two questions
a revoke asks. Celery 5.7's worker asks the backend, for every revoked task id it does not hold,
for the task's state and then marks it revoked; the disabled backend raises there, so every worker
logged "Failed to mark task ... as revoked in backend" for every stage a cancel or a fail-fast
stopped."""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.base import DisabledBackend

#: `result_backend` when none is configured (celery resolves "module:Class").
NO_RESULTS = f"{__name__}:NoResults"


class NoResults(DisabledBackend):
    def get_state(self, task_id: str) -> str:
        return states.PENDING  # never stored: nothing to keep from being overwritten

    def mark_as_revoked(self, *args: Any, **kwargs: Any) -> None:
        return None  # the run store records what a cancel stopped


__all__ = ["NO_RESULTS", "NoResults"]
