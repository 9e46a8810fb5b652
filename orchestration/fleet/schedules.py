"""Schedules: pipelines that `chordflow beat` submits on a cron expression or an interval.

Entries live in Redis through celery-redbeat (under `<prefix>:redbeat:`), so any
machine can add, list or remove them and beat needs no local state. An entry
stores the validated pipeline as JSON (its `--set` overrides and `${...}`
already applied when it was added) and fires the Celery task
`chordflow.submit_scheduled` on the cpu queue; a worker validates the pipeline
again and submits the run.

Each firing carries its tick: the start of the schedule period it belongs to
(the interval for `every`, the minute for cron), read from Redis's clock when
beat sends it. The run is submitted with the idempotency key
`schedule:<name>:<tick>`, so a tick yields at most one run even if two beats
fire it. RedBeat's lock already keeps a second beat waiting; the key makes a
duplicate harmless anyway.

A tick whose pipeline's `depends_on`/`requires` are not met is not started: it is
recorded as a run with status `skipped` and the reason (`runs` lists it, `status`
shows why), under the same key. Adding a schedule also registers its pipeline in
the registry of pipelines (`fleet/registry.py`), so `chordflow pipelines` shows it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, ensure_conf, get_redis

from orchestration.api import Client
from orchestration.engine import sentinel
from orchestration.engine.celeryconfig import client_app
from orchestration.engine.keys import Keys
from orchestration.engine.store import RunStore, connect
from orchestration.errors import ChordflowError, DependenciesNotMet, ScheduleError
from orchestration.fleet.registry import register
from orchestration.fleet.scheduled_task import SUBMIT_TASK
from orchestration.language.durations import format_duration, parse_duration
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings
from orchestration.states import RunStatus

MIN_EVERY_S = 1.0
BEAT_MAX_INTERVAL_S = 5.0  # how soon beat sees a schedule added while it sleeps
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

log = logging.getLogger("chordflow.schedules")


# -- keys (beside redbeat's own, which it builds from the prefix below) ----------------------------


def redbeat_prefix(settings: Settings) -> str:
    """RedBeat's key prefix: entries are `<prefix>:redbeat:<name>`, its lock `<prefix>:redbeat::lock`."""
    return Keys(settings.key_prefix).redbeat_prefix()


def outcomes_key(settings: Settings) -> str:
    """Hash: schedule name -> JSON of its last firing (tick, run_id or error, at)."""
    return Keys(settings.key_prefix).schedule_outcomes()


# -- expressions -----------------------------------------------------------------------------------


def parse_cron(expr: str) -> crontab:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), in UTC."""
    fields = expr.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"cron {expr!r} must have 5 fields: minute hour day-of-month month day-of-week "
            "(e.g. '0 19 * * *')"
        )
    try:
        return crontab(
            minute=fields[0],
            hour=fields[1],
            day_of_month=fields[2],
            month_of_year=fields[3],
            day_of_week=fields[4],
        )
    except (ValueError, IndexError, KeyError) as exc:
        raise ScheduleError(f"cron {expr!r} is not valid: {exc}") from None


def parse_every(text: str) -> schedule:
    """`--every 1s`, `15m`, `1h`: an interval of at least one second."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ScheduleError(f"--every: {exc}") from None
    if seconds < MIN_EVERY_S:
        raise ScheduleError(f"--every {text!r}: the shortest interval is {MIN_EVERY_S:g}s")
    return schedule(run_every=timedelta(seconds=seconds))


def describe(sched: BaseSchedule) -> str:
    """`cron 0 19 * * *` or `every 5m`."""
    if isinstance(sched, crontab):
        return "cron " + " ".join(
            str(getattr(sched, f"_orig_{part}"))
            for part in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )
    if isinstance(sched, schedule):
        return f"every {format_duration(sched.run_every.total_seconds())}"
    return str(sched)


def tick_of(sched: BaseSchedule, now_s: float) -> int:
    """The start (epoch s) of the period of `sched` that `now_s` falls in: the interval for an
    interval schedule, the minute for cron (its resolution). Two beats firing the same tick agree."""
    period = max(MIN_EVERY_S, sched.run_every.total_seconds()) if isinstance(sched, schedule) else 60.0
    return int(math.floor(now_s / period) * period)


def next_fire_s(sched: BaseSchedule, last_run_s: float | None, now_s: float) -> float:
    """When `sched` fires next (epoch s), from its cron expression or interval, as of `now_s`: a
    cron's next minute that matches (celery's crontab arithmetic, to the minute: its resolution);
    an interval's last firing plus the interval, or now when that has passed (beat fires a due
    schedule at its next loop). RedBeat's `due_at` is a remaining estimate taken at another
    instant, and lands seconds early or in the past."""
    if isinstance(sched, crontab):
        # the matching minute after `now_s` (remaining_delta counts from the time it is given;
        # remaining_estimate would subtract this process's clock, read at another instant)
        start, delta, _ = sched.remaining_delta(datetime.fromtimestamp(now_s, UTC))
        return math.floor((start + delta).timestamp() / 60) * 60.0
    every = max(MIN_EVERY_S, sched.run_every.total_seconds()) if isinstance(sched, schedule) else 60.0
    return now_s if last_run_s is None else max(now_s, last_run_s + every)


def idempotency_key(name: str, tick: int) -> str:
    return f"schedule:{name}:{tick}"


# -- the beat side -----------------------------------------------------------------------------------


def beat_app(settings: Settings, lock: bool = True) -> Celery:
    """The Celery app `chordflow beat` and the schedule commands use: RedBeat on our Redis."""
    app = client_app(settings, name="chordflow-beat")
    app.conf.update(
        beat_scheduler="orchestration.fleet.schedules:ChordflowScheduler",
        beat_max_loop_interval=BEAT_MAX_INTERVAL_S,
        **redbeat_redis(settings),
        redbeat_key_prefix=redbeat_prefix(settings),
        # A beat that dies leaves the lock for 5 loop intervals; then a waiting beat takes over.
        redbeat_lock_key=Keys(settings.key_prefix).redbeat_lock() if lock else None,
        redbeat_lock_timeout=BEAT_MAX_INTERVAL_S * 5,
    )
    ensure_conf(app)
    return app


def redbeat_redis(settings: Settings) -> dict[str, Any]:
    """RedBeat's Redis settings: the URL as it is, or its Sentinel settings for redis+sentinel://."""
    url = settings.redis_url or ""
    if not sentinel.is_sentinel(url):
        return {"redbeat_redis_url": url, "redbeat_redis_options": {}}  # not the broker's options
    parsed = sentinel.parse(url)
    options: dict[str, Any] = {
        "sentinels": list(parsed.sentinels),
        "service_name": parsed.master_name,
        "db": parsed.db,
        "socket_timeout": settings.redis_timeout_s,
        "sentinel_kwargs": {"socket_timeout": 2.0, "socket_connect_timeout": 2.0},
        # RedBeat retries a lost connection (tenacity) for this long, asking Sentinel again
        "retry_period": 60,
    }
    if parsed.password:
        options["password"] = parsed.password
    if parsed.username:
        options["username"] = parsed.username
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


class ChordflowScheduler(RedBeatScheduler):
    """RedBeat, plus the tick of each firing in the message (from Redis's clock, so beats on
    machines whose clocks differ still agree)."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task == SUBMIT_TASK:
            seconds, micros = get_redis(self.app).time()
            # The entry is read afresh from Redis every tick and only its meta is written back,
            # so the tick never reaches the stored definition.
            entry.kwargs = {**entry.kwargs, "tick": tick_of(entry.schedule, seconds + micros / 1e6)}
        return super().apply_async(entry, producer, advance, **kwargs)


# -- adding, listing, removing -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    pipeline: str
    when: str
    next_at: float | None  # epoch s
    last_fired_at: float | None  # epoch s
    source: str | None
    sets: dict[str, Any]
    max_age_s: float | None
    added_at: float | None
    last: dict[str, Any] | None  # the last firing's outcome: tick, run_id or error, at

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ScheduleError(
            f"schedule name {name!r} must be letters, digits, '.', '_' or '-' "
            "(up to 200, starting with a letter or digit)"
        )
    return name


def add_schedule(
    settings: Settings,
    spec: PipelineSpec,
    when: BaseSchedule,
    name: str | None = None,
    sets: dict[str, Any] | None = None,
    source: str | None = None,
) -> tuple[str, bool]:
    """Store (or replace) a schedule; returns (name, created). A replaced schedule keeps its last run time.
    Its pipeline is registered too (InvalidPipeline, before anything is stored, if that would make a
    cycle of pipelines)."""
    name = check_name(name or spec.name)
    register(RunStore(connect(settings), settings), spec, source, sets, origin=f"schedule {name}")
    app = beat_app(settings)
    entry = RedBeatSchedulerEntry(
        name,
        SUBMIT_TASK,
        when,
        app=app,
        options={"queue": settings.cpu_queue},
        kwargs={
            "schedule": name,
            "spec": spec.model_dump(mode="json", exclude_defaults=True),
            "source": source,
            "sets": sets or {},
            "added_at": round(time.time(), 3),
        },
    )
    existed = bool(get_redis(app).exists(entry.key))
    entry.save()
    return name, not existed


def remove_schedule(settings: Settings, name: str) -> bool:
    app = beat_app(settings)
    key = RedBeatSchedulerEntry.generate_key(app, name)
    if not get_redis(app).exists(key):
        return False
    RedBeatSchedulerEntry(name, app=app).delete()
    get_redis(app).hdel(outcomes_key(settings), name)
    return True


def list_schedules(settings: Settings) -> list[ScheduleInfo]:
    app = beat_app(settings)
    client = get_redis(app)
    outcomes = client.hgetall(outcomes_key(settings))
    seconds, micros = client.time()  # Redis's clock, as beat's ticks are
    now_s = seconds + micros / 1e6
    found = []
    for key in client.zrange(app.redbeat_conf.schedule_key, 0, -1):
        try:
            entry = RedBeatSchedulerEntry.from_key(key, app=app)
        except KeyError:
            continue
        if entry.task != SUBMIT_TASK:
            continue
        kw = entry.kwargs
        spec = kw.get("spec") or {}
        last_run_s = entry.last_run_at.timestamp() if entry.last_run_at else None
        found.append(
            ScheduleInfo(
                name=entry.name,
                pipeline=str(spec.get("name", "?")),
                when=describe(entry.schedule),
                next_at=next_fire_s(entry.schedule, last_run_s, now_s),
                last_fired_at=last_run_s,
                source=kw.get("source"),
                sets=kw.get("sets") or {},
                max_age_s=_seconds(spec.get("max_age")),
                added_at=kw.get("added_at"),
                last=json.loads(outcomes[entry.name]) if entry.name in outcomes else None,
            )
        )
    return sorted(found, key=lambda s: s.name)


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration(value) if value is not None else None
    except ValueError:
        return None


# -- the worker side (its task: scheduled_task.py) ----------------------------------------------------


def submit_tick(client: Client, name: str, tick: int, spec_data: dict[str, Any]) -> str:
    """Validate the stored pipeline and submit it once for this tick; record the outcome."""
    outcome: dict[str, Any] = {"tick": tick, "at": round(time.time(), 3)}
    try:
        spec = validate_data(spec_data, source=f"schedule '{name}'", settings=client.settings)
        key = idempotency_key(name, tick)
        try:
            outcome["run_id"] = client.submit(spec, idempotency_key=key).run_id
        except DependenciesNotMet as exc:  # recorded as a skipped run, with why, listed by `runs`
            reason = "dependencies not met: " + "; ".join(exc.unmet)
            outcome["run_id"] = client.skip(spec, reason, key, {"schedule": name, "tick": tick})
            outcome[RunStatus.SKIPPED] = reason
            log.warning("schedule %s, tick %s: skipped (run %s): %s", name, tick, outcome["run_id"], reason)
    except ChordflowError as exc:
        outcome["error"] = str(exc)
        log.error("schedule %s, tick %s: not submitted: %s", name, tick, exc)
    client.store.records.record_schedule_outcome(name, outcome)
    return outcome.get("run_id") or f"failed: {outcome['error']}"
