"""Commands that run pipelines and read runs: submit, status, watch, runs, logs, cancel,
pause, resume, stages. (`worker` is the worker package's, see `main.py`.)"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from orchestration.api import Client
from orchestration.cli import progress
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    command,
    console,
    json_option,
    load_spec,
    pipeline_options,
    print_json,
    redis_settings,
    say,
    settings_from_env,
)
from orchestration.engine import redis_url
from orchestration.engine.store import connect
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.graph.render import term
from orchestration.graph.resolve import resolve
from orchestration.language.ids import check_idempotency_key, check_run_id, check_stage_id
from orchestration.settings import Settings


@contextmanager
def embedded_fleet(settings: Settings, concurrency: int | None = None) -> Iterator[Settings]:
    """A private Redis and a local worker serving every queue; both stopped on exit."""
    server = RedisServer().start()
    worker = None
    try:
        worker = WorkerProcess(
            server.url,
            settings.queues,
            concurrency or max(2, os.cpu_count() or 2),
            hostname="local",
            loglevel="WARNING",
        ).start()
        fleet = settings.model_copy(update={"redis_url": server.url})
        wait_for_workers(connect(fleet), settings.key_prefix, 1, timeout_s=60)
        yield fleet
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def client_from_env() -> Client:
    """A client of CHORDFLOW_REDIS_URL (checked: exit 2 if malformed). Built inside a command,
    its Redis client fails fast (`redis_url.fail_fast`)."""
    return Client(redis_settings())


@click.command()
@pipeline_options
@click.option("--follow", "-f", is_flag=True, help="Show progress live; exit 1 if the run fails.")
@click.option("--wait", "-w", is_flag=True, help="Wait quietly for the end; exit 1 if the run fails.")
@click.option("--dry-run", is_flag=True, help="Validate and resolve, print what would run, send nothing.")
@click.option("--no-check", is_flag=True, help="Queue even if no live worker serves a stage's type.")
@click.option(
    "--idempotency-key", metavar="KEY", help="A repeated submit with the same key returns the same run."
)
@click.option("--timeout", type=float, help="With --follow/--wait: give up waiting after this many seconds.")
@click.option("--items", is_flag=True, help="With --follow: show fan-out items too.")
@click.option("--no-cache", is_flag=True, help="Run every stage even if a cached output exists.")
@json_option
@command
def submit(
    file: Path,
    sets: tuple[str, ...],
    select: str | None,
    only: bool,
    follow: bool,
    wait: bool,
    dry_run: bool,
    no_check: bool,
    idempotency_key: str | None,
    timeout: float | None,
    items: bool,
    no_cache: bool,
    as_json: bool,
) -> int:
    """Run a pipeline. Without CHORDFLOW_REDIS_URL, runs it on a private Redis and local workers."""
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    settings = settings_from_env()
    spec = load_spec(file, sets, settings)
    if dry_run:
        graph = resolve(spec, settings, select, only)
        if as_json:
            print_json({"pipeline": graph.name, "stages": [n.id for n in graph.nodes], "dry_run": True})
        else:
            say(f"dry run: {len(graph.nodes)} stages would run: {', '.join(n.id for n in graph.nodes)}")
        return EXIT_OK
    if not settings.redis_url:  # (an embedded Redis: its own URL, nothing to check)
        with embedded_fleet(settings) as local:
            if not as_json:
                say(
                    f"no CHORDFLOW_REDIS_URL: running on a private Redis and local workers ({local.redis_url})"
                )
            return _submit_and_show(
                Client(local),
                spec,
                select,
                only,
                True,
                no_check,
                idempotency_key,
                timeout,
                items,
                as_json,
                no_cache,
                show_outputs=True,
            )
    redis_url.check(settings.redis_url)  # exit 2 for a malformed URL, before any connection
    return _submit_and_show(
        Client(settings),
        spec,
        select,
        only,
        follow or wait,
        no_check,
        idempotency_key,
        timeout,
        items,
        as_json,
        no_cache,
        quiet=wait and not follow,
    )


def _submit_and_show(
    client: Client,
    spec: Any,
    select: str | None,
    only: bool,
    follow: bool,
    no_check: bool,
    key: str | None,
    timeout: float | None,
    items: bool,
    as_json: bool,
    no_cache: bool,
    quiet: bool = False,
    show_outputs: bool = False,
) -> int:
    handle = client.submit(
        spec, selection=select, only=only, check_types=not no_check, idempotency_key=key, no_cache=no_cache
    )
    if not follow:
        print_json({"run_id": handle.run_id}) if as_json else say(handle.run_id)
        return EXIT_OK
    if not as_json:
        say(f"run {handle.run_id} submitted")
    if as_json or quiet:
        final = client.follow(handle.run_id, timeout)
    else:
        final = progress.follow(client, handle.run_id, console, timeout, items)
    status = client.status(handle.run_id)
    if as_json:
        print_json(status)
    else:
        _print_summary(status, show_outputs)
    return EXIT_OK if final == "succeeded" else EXIT_FAILED


def _print_summary(status: dict[str, Any], outputs: bool) -> None:
    console.print(progress.status_table(status))
    if outputs:
        for sid, stage in status["stages"].items():
            if stage["output"] is not None:
                say(f"{sid}: {json.dumps(stage['output'])[:300]}")
    if status["metrics"]:
        say("metrics: " + ", ".join(f"{k}={v}" for k, v in status["metrics"].items()))
    say(f"run {status['run_id']} {status['status']}")


@click.command()
@click.argument("run_id")
@json_option
@command
def status(run_id: str, as_json: bool) -> int:
    """A run's state and, per stage, state, attempts, host, queue, times, error and output."""
    check_run_id(run_id)
    data = client_from_env().status(run_id)
    if as_json:
        print_json(data)
    else:
        _print_summary(data, outputs=False)
    return EXIT_OK if data["status"] != "failed" else EXIT_FAILED


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float)
@click.option("--items", is_flag=True, help="Show fan-out items too.")
@command
def watch(run_id: str, timeout: float | None, items: bool) -> int:
    """Follow a run live until it ends; exit 1 if it fails."""
    check_run_id(run_id)
    client = client_from_env()
    client.handle(run_id)
    final = progress.follow(client, run_id, console, timeout, items)
    _print_summary(client.status(run_id), outputs=False)
    return EXIT_OK if final == "succeeded" else EXIT_FAILED


@click.command()
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--status", "state", help="Only runs in this state.")
@click.option("--since", type=float, help="Only runs submitted in the last N seconds.")
@click.option("--limit", default=20, show_default=True)
@json_option
@command
def runs(pipeline: str | None, state: str | None, since: float | None, limit: int, as_json: bool) -> int:
    """Recent runs, newest first."""
    records = []
    horizon = time.time() - since if since else 0
    for record in client_from_env().runs(limit if not (state or since) else limit * 10, pipeline):
        if (state and record.get("status") != state) or float(record.get("created_at", 0)) < horizon:
            continue
        records.append(record)
        if len(records) >= limit:
            break
    if as_json:
        print_json(
            [
                {
                    k: record.get(k)
                    for k in (
                        "run_id",
                        "pipeline",
                        "version",
                        "status",
                        "created_at",
                        "finished_at",
                        "failed_stage",
                    )
                }
                for record in records
            ]
        )
        return EXIT_OK
    table = Table("run", "pipeline", "status", "submitted", "took")
    for r in records:
        created = float(r.get("created_at", 0))
        took = f"{float(r['finished_at']) - created:.1f}s" if r.get("finished_at") else ""
        table.add_row(
            term(r["run_id"]),
            term(r.get("pipeline", "")),
            term(r.get("status", "")),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)),
            took,
        )
    console.print(table)
    return EXIT_OK


@click.command()
@click.argument("run_id")
@click.argument("stage_id", required=False)
@command
def logs(run_id: str, stage_id: str | None) -> int:
    """Captured output of a run's stages (shell output, ctx.log lines)."""
    check_run_id(run_id)
    if stage_id is not None:
        check_stage_id(stage_id)
    client = client_from_env()
    graph = client.store.graph(run_id)
    for node in graph.nodes:
        if stage_id and node.id != stage_id:
            continue
        lines = client.store.logs(run_id, node.id)
        if lines or stage_id:
            say(f"== {node.id}")
            for line in lines:
                say(line)
    return EXIT_OK


def _control(op: str, run_id: str) -> int:
    check_run_id(run_id)
    client = client_from_env()
    outcome = getattr(client, op)(run_id)
    say(f"run {run_id}: {outcome}")
    return EXIT_OK if outcome in ("cancelled", "paused", "resumed", "retrying") else EXIT_FAILED


@click.command()
@click.argument("run_id")
@command
def cancel(run_id: str) -> int:
    """Cancel a run: revoke what runs, cancel what waits."""
    return _control("cancel", run_id)


@click.command()
@click.argument("run_id")
@command
def pause(run_id: str) -> int:
    """Pause a run: nothing new starts; running stages finish."""
    return _control("pause", run_id)


@click.command()
@click.argument("run_id")
@command
def resume(run_id: str) -> int:
    """Resume a paused run."""
    return _control("resume", run_id)


@click.command("retry")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Follow the run until it ends.")
@command
def retry_command(run_id: str, follow: bool) -> int:
    """Run a failed run again from the point of failure, reusing every output that succeeded."""
    code = _control("retry", run_id)
    if code or not follow:
        return code
    client = client_from_env()
    final = progress.follow(client, run_id, console)
    _print_summary(client.status(run_id), outputs=False)
    return EXIT_OK if final == "succeeded" else EXIT_FAILED


@click.command()
@json_option
@command
def stages(as_json: bool) -> int:
    """Stage types served by live workers (name, version, queue, retry policy, workers)."""
    workers = client_from_env().store.live_workers()
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


COMMANDS = (submit, status, watch, runs, logs, cancel, pause, resume, retry_command, stages)
