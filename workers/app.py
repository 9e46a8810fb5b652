"""The worker's Celery app: strict configuration plus one task per stage type."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

from celery import Celery

from orchestration.engine.celeryconfig import celery_config
from orchestration.engine.dispatch import Dispatcher
from orchestration.engine.limits import Capacity
from orchestration.engine.registry import ENTRY_POINT_GROUP, REGISTRY, Registry, StageType
from orchestration.engine.stage_message import MalformedMessage, StageMessage
from orchestration.engine.store import RunStore, connect
from orchestration.fleet.scheduled_task import register_scheduled_task
from orchestration.language.rates import settings_limits
from orchestration.settings import Settings

from . import builtins as _builtins  # noqa: F401  (registers shell, noop, sleep, fail)
from . import guard
from .execution import WorkerEnv, execute, execute_chunk
from .lease import LeaseKeeper
from .outcome import AttemptFailed, InPlaceEvents, StageRequest, task_outcome
from .unknown import install_unknown_task_handler

log = logging.getLogger("chordflow.worker")


def load_stage_modules(modules: Iterable[str]) -> None:
    """Import the modules the operator named and the installed entry points: this registers types.

    Only the worker's own configuration decides what is imported; a pipeline never does.
    """
    for module in modules:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def create_app(
    settings: Settings,
    registry: Registry = REGISTRY,
    hostname: str | None = None,
    capacity: Capacity | None = None,
) -> Celery:
    """The worker's app; `capacity`: what this worker admits GPU and memory stages against
    (engine/limits.py; a worker started by `run_worker` always has it)."""
    app = Celery("chordflow", set_as_current=False)
    host = hostname or socket.gethostname()
    pools, type_rates = settings_limits(settings)
    app.conf.update(celery_config(settings))
    guard.install(app)  # a malformed message is dropped before Celery reads it (workers/guard.py)
    state: dict[str, Any] = {}

    def env() -> WorkerEnv:
        # Built lazily in each pool process, after the fork.
        if state.get("pid") != os.getpid():
            store = RunStore(connect(settings), settings)
            dispatcher = Dispatcher(app, store)
            state.update(
                pid=os.getpid(),
                env=WorkerEnv(
                    settings,
                    store,
                    dispatcher,
                    registry,
                    host,
                    _lease_keeper(settings),
                    {},
                    capacity or Capacity(host, (), 0.0, 0),
                    pools,
                    type_rates,
                ),
            )
        return state["env"]

    for stage_type in registry:
        _register(app, stage_type, env)
    register_scheduled_task(app, settings)
    app.chordflow_env = env  # type: ignore[attr-defined]
    install_unknown_task_handler(app, settings)
    return app


def _lease_keeper(settings: Settings) -> LeaseKeeper:
    # Its own fail-fast client: a cut link must show within a heartbeat, not after retries.
    quick = RunStore(connect(settings, timeout_s=max(0.5, settings.heartbeat_s)), settings)
    return LeaseKeeper(quick, settings.heartbeat_s)


def _register(app: Celery, stage_type: StageType, env: Any) -> None:
    @app.task(
        name=stage_type.task_name,
        shared=False,  # this app's own: another app in the process (a test's) must not get it
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        typing=False,
        throws=(AttemptFailed,),  # a failed attempt: one INFO line in the worker log (outcome.py)
        Request=StageRequest,  # tells the pool process whether Flower turned task events on
    )
    def run_stage(self: Any, *args: Any, **kwargs: Any) -> str:
        try:
            message = StageMessage.parse(args, kwargs)
        except MalformedMessage as exc:
            log.error("refusing malformed message %s for %s: %s", self.request.id, stage_type.task_name, exc)
            return "refused: malformed message"
        if message.count > 1:
            return execute_chunk(env(), stage_type, self.request.id, message)
        # FAILURE or RETRY in Flower for a failed or retried attempt, after its commit (outcome.py)
        events = None
        if getattr(self.request, "chordflow_events", False):  # Flower's: for the stages run in place
            events = InPlaceEvents(self.app, self.request.hostname, self.request.id)
        return task_outcome(execute(env(), stage_type, self.request.id, message, events))
