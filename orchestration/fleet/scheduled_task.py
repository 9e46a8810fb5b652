"""The worker side of schedules: the task `chordflow beat` fires, registered in every worker's app.

Kept apart from `schedules.py` so a worker imports neither RedBeat, the client nor the file
language until a scheduled submit arrives: the task's body imports `schedules.submit_tick`,
which validates the stored pipeline and submits the run (see `schedules.py`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from orchestration.settings import Settings

if TYPE_CHECKING:
    from orchestration.api import Client

SUBMIT_TASK = "chordflow.submit_scheduled"

log = logging.getLogger("chordflow.schedules")


def register_scheduled_task(app: Celery, settings: Settings) -> None:
    """Register `chordflow.submit_scheduled` in a worker's app (called by workers.app.create_app)."""
    clients: dict[int, Client] = {}

    @app.task(
        name=SUBMIT_TASK,
        shared=False,  # this app's own: another app in the process (a test's) must not get it
        ignore_result=True,
        acks_late=True,
        typing=False,
        autoretry_for=(redis.ConnectionError,),
        retry_backoff=True,
        max_retries=3,
    )
    def submit_scheduled(schedule: Any = None, tick: Any = None, spec: Any = None, **_: Any) -> str:
        if (
            not isinstance(schedule, str)
            or not isinstance(spec, dict)
            or not isinstance(tick, int)
            or isinstance(tick, bool)
        ):
            log.error(
                "refusing a scheduled submit without schedule, tick and spec "
                "(was it sent by `chordflow beat`?)"
            )
            return "refused: malformed message"
        from orchestration.api import Client
        from orchestration.fleet.schedules import submit_tick

        client = clients.get(os.getpid())
        if client is None:  # one per pool process, built after the fork
            client = clients[os.getpid()] = Client(settings)
        return submit_tick(client, schedule, tick, spec)
