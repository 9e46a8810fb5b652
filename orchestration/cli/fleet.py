"""Commands that run or watch the fleet: flower, beat, schedule add/list/remove, health."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestration.api import Client
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    command,
    console,
    file_argument,
    json_option,
    load_spec,
    print_json,
    redis_settings,
    say,
    set_option,
)
from orchestration.cli.capacity_view import capacity_lines
from orchestration.engine import redis_url
from orchestration.engine.celeryconfig import client_app
from orchestration.engine.store import connect
from orchestration.errors import InvalidPipeline, Problem, ScheduleError
from orchestration.fleet import health as health_checks
from orchestration.fleet.schedules import (
    add_schedule,
    beat_app,
    list_schedules,
    parse_cron,
    parse_every,
    remove_schedule,
)
from orchestration.graph.render import term
from orchestration.language.durations import format_duration
from orchestration.language.loader import parse_override
from orchestration.settings import Settings


def _settings_with_redis(ping: bool = False) -> Settings:
    """CHORDFLOW_REDIS_URL's settings (usage error if unset, exit 2 if malformed). `ping`: check now,
    with a client that fails fast, that the Redis answers (for what reaches Redis through a client
    of its own, like RedBeat's, which would otherwise retry for a long time)."""
    settings = redis_settings()
    if ping:
        client = connect(settings)
        try:
            client.ping()
        finally:
            client.close()
    return settings


# -- flower, beat ------------------------------------------------------------------------------------


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0 in a container).",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@command
def flower(port: int, address: str, flower_args: tuple[str, ...]) -> int:
    """Start Flower on the fleet's Redis (more Flower options may follow, e.g. --url_prefix=flower).

    Basic auth comes from CHORDFLOW_FLOWER_BASIC_AUTH=user:password.
    """
    settings = _settings_with_redis()
    if settings.flower_basic_auth:
        # Flower reads its own FLOWER_* variables; this keeps the password out of the process list.
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    else:
        say(
            f"warning: Flower on {address}:{port} has no authentication: anyone who reaches it can revoke "
            "tasks and shut workers down. Set CHORDFLOW_FLOWER_BASIC_AUTH=user:password",
            err=True,
        )
    argv = ["flower", f"--port={port}", f"--address={address}", *flower_args]
    app = client_app(settings)
    # Workers send task events only while someone watches: turn them on in the live workers now
    # (Flower itself does so every 5 s, for the workers that start later).
    app.control.enable_events()
    return app.start(argv=argv) or EXIT_OK


@click.command()
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option(
    "--no-lock",
    is_flag=True,
    hidden=True,
    help="Skip RedBeat's lock (tests: two beats firing the same tick still submit once).",
)
@command
def beat(loglevel: str, no_lock: bool) -> int:
    """Submit scheduled pipelines (celery beat with RedBeat; a second beat waits for the lock)."""
    settings = _settings_with_redis()
    for warning in health_checks.redis_warnings(connect(settings)):
        say(f"WARNING: {warning}", err=True)
    app = beat_app(settings, lock=not no_lock)
    return app.start(argv=["beat", "--loglevel", loglevel.upper()]) or EXIT_OK


# -- schedule add / list / remove ---------------------------------------------------------------------


@click.group()
def schedule() -> None:
    """Pipelines that `chordflow beat` submits on a cron expression or an interval."""


@schedule.command("add")
@file_argument
@set_option
@click.option(
    "--cron",
    metavar="EXPR",
    help="minute hour day-of-month month day-of-week, in UTC (default: the file's `schedule:`).",
)
@click.option("--every", metavar="DURATION", help="An interval instead: 1s, 15m, 1h.")
@click.option("--name", help="The schedule's name (default: the pipeline's).")
@json_option
@command
def schedule_add(
    file: Path, sets: tuple[str, ...], cron: str | None, every: str | None, name: str | None, as_json: bool
) -> int:
    """Store a schedule for FILE (validated now; `--set` values are kept with it)."""
    if cron and every:
        raise click.UsageError("give --cron or --every, not both")
    settings = _settings_with_redis(ping=True)
    spec = load_spec(file, sets, settings)
    expr = cron or spec.schedule
    if not (expr or every):
        raise InvalidPipeline(
            Problem(
                "no schedule: give --cron EXPR or --every DURATION, or put "
                '`schedule: "0 19 * * *"` in the file',
                source=str(file),
            )
        )
    try:
        when = parse_every(every) if every else parse_cron(str(expr))
    except ScheduleError as exc:
        if cron or every:
            raise
        raise InvalidPipeline(Problem(f"schedule: {exc}", source=str(file))) from None
    overrides = dict(parse_override(item) for item in sets)
    added, created = add_schedule(settings, spec, when, name, overrides, str(file))
    if as_json:
        print_json({"name": added, "pipeline": spec.name, "created": created})
    else:
        timing = f"every {every}" if every else f"on cron {expr} (UTC)"
        say(
            f"schedule '{added}' {'added' if created else 'updated'}: {spec.name} {timing}; "
            "`chordflow beat` submits it"
        )
    return EXIT_OK


@schedule.command("list")
@json_option
@command
def schedule_list(as_json: bool) -> int:
    """The stored schedules, their next firing and the outcome of the last."""
    found = list_schedules(_settings_with_redis(ping=True))
    if as_json:
        print_json([s.as_dict() for s in found])
        return EXIT_OK
    if not found:
        say("no schedules (add one with `chordflow schedule add FILE --cron EXPR`)")
        return EXIT_OK
    table = Table("schedule", "pipeline", "when", "next", "last")
    for s in found:
        table.add_row(term(s.name), term(s.pipeline), term(s.when), _clock(s.next_at), term(_outcome(s.last)))
    console.print(table)
    return EXIT_OK


def _clock(epoch_s: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s)) if epoch_s else "-"


def _outcome(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    what = f"run {last['run_id']}" if last.get("run_id") else f"error: {str(last.get('error'))[:120]}"
    return f"{_clock(last.get('tick'))} {what}"


@schedule.command("remove")
@click.argument("name")
@command
def schedule_remove(name: str) -> int:
    """Remove a schedule; runs it already submitted go on."""
    if not remove_schedule(_settings_with_redis(ping=True), name):
        say(f"error: no schedule named '{name}' (see `chordflow schedule list`)", err=True)
        return EXIT_FAILED
    say(f"schedule '{name}' removed")
    return EXIT_OK


# -- health ------------------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--worker",
    "worker_probe",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[NAME]",
    help="Liveness of one worker only: Redis reachable and its heartbeat fresh. NAME is the "
    "worker's `-n` name (default: this machine's hostname), for container probes; a stale "
    "pipeline elsewhere must not restart workers.",
)
@json_option
@command
def health(worker_probe: str | None, as_json: bool) -> int:
    """Redis, workers per queue, queue depths, stages waiting for capacity, stale pipelines; exit 1
    when unhealthy, saying why."""
    settings = _settings_with_redis()
    # two tries of half the limit each: an answer within redis_timeout_s, reachable or not
    half = max(0.5, settings.redis_timeout_s / 2)
    if worker_probe is not None:
        with redis_url.fail_fast(half):
            ok, why = health_checks.worker_alive(settings, worker_probe or socket.gethostname())
        print_json({"healthy": ok, "reason": why}) if as_json else say(why, err=not ok)
        return EXIT_OK if ok else EXIT_FAILED
    report = health_checks.check(settings, timeout_s=half)
    if as_json:
        print_json(report.as_dict())
        return EXIT_OK if report.healthy else EXIT_FAILED
    say(f"redis {report.redis_url}: {'reachable' if report.reachable else 'UNREACHABLE'}")
    for warning in report.warnings:
        say(f"WARNING: {warning}", err=True)
    if report.reachable:
        for line in report.replication.lines():  # role, replicas and their lag
            say(line)
        console.print(_queue_table(report))
        for line in capacity_lines(report.capacity):  # stages waiting for GPUs or memory, per queue
            say(line)
        for p in report.pipelines:
            last = _clock(p.last_success_at) if p.last_success_at else "never"
            say(
                f"pipeline {p.pipeline}: last success {last}, max_age {format_duration(p.max_age_s)}"
                f"{' STALE' if p.stale else ''}"
            )
    for problem in report.problems:
        say(f"UNHEALTHY: {problem}", err=True)
    say("healthy" if report.healthy else f"unhealthy: {len(report.problems)} problem(s)")
    return EXIT_OK if report.healthy else EXIT_FAILED


def _queue_table(report: health_checks.HealthReport) -> Table:
    table = Table("queue", "waiting", "delayed", "delivered", "oldest waiting", "workers")
    for q in report.queues:
        workers = ", ".join(f"{host} ({_resources(report.workers[host])})" for host in q.workers) or "NONE"
        waited = q.oldest_waiting_s
        oldest = f"≥{format_duration(round(waited, 1))}" if waited is not None else "-"
        table.add_row(
            term(q.name),
            str(q.waiting),
            str(q.delayed),
            str(q.delivered),
            oldest,
            term(workers),
            style="bold red" if q.work and not q.workers else None,
        )
    return table


def _resources(info: dict[str, Any]) -> str:
    machine = info.get("machine") or {}
    has = {**machine, **(info.get("capacity") or {})}  # what it admits stages against, else its machine
    slots = f", {has['slots']} slots" if has.get("slots") else ""
    return f"{machine.get('cpus', '?')} cpu, {has.get('memory_gb', '?')} GB, {has.get('gpus', 0)} gpu{slots}"


@click.command()
@json_option
@command
def stages(as_json: bool) -> int:
    """Stage types served by live workers (name, version, queue, retry policy, workers)."""
    workers = Client(redis_settings()).store.fleet.live_workers()
    types: dict[str, dict[str, Any]] = {}
    for host, info in workers.items():
        for t in info.get("types", []):
            entry = types.setdefault(t["name"], {**t, "workers": [], "queues": set()})
            entry["workers"].append(host)
            entry["queues"].update(info.get("queues", []))
    rows = [{**t, "queues": sorted(t["queues"])} for t in sorted(types.values(), key=lambda t: t["name"])]
    if as_json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        say("no live workers", err=True)
        return EXIT_FAILED
    table = Table("type", "version", "ref", "retry", "queues", "workers")
    for t in rows:
        retry = ", ".join(f"{k}={v}" for k, v in (t["retry"] or {}).items()) or "none"
        table.add_row(
            *(
                term(cell)
                for cell in (
                    t["name"],
                    t["version"],
                    t["ref"],
                    retry,
                    ",".join(t["queues"]),
                    ",".join(t["workers"]),
                )
            )
        )
    console.print(table)
    return EXIT_OK


COMMANDS = (flower, beat, schedule, health, stages)
