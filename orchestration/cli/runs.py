"""Commands that run pipelines and read runs: submit, status, watch, runs. (`logs` is in
`logs.py`, cancel/pause/resume/retry in `control.py`, `worker` is the worker package's.)

Every read command's `--json` is typed (runview.to_json): numbers, ISO 8601 times, nested
objects. Exit codes: 0 succeeded, 1 failed, 2 invalid input, 3 timed out waiting, 130 Ctrl-C
while following (the run goes on): docs/cli.md."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from orchestration.api import Client
from orchestration.cli import progress
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    client_from_env,
    command,
    console,
    json_option,
    load_spec,
    pipeline_options,
    print_json,
    print_json_line,
    say,
    settings_from_env,
    stopped_following,
)
from orchestration.cli.capacity_view import placement_warnings
from orchestration.cli.runview import iso, run_view, to_json, typed_event
from orchestration.engine import redis_url
from orchestration.engine.store import connect
from orchestration.fleet.embedded import RedisServer, WorkerProcess, wait_for_workers
from orchestration.graph.render import term
from orchestration.graph.resolve import resolve
from orchestration.language.ids import check_idempotency_key, check_run_id
from orchestration.settings import Settings
from orchestration.states import RunStatus


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


@click.command()
@pipeline_options
@click.option("--follow", "-f", is_flag=True, help="Show progress live; exit 1 if the run fails.")
@click.option("--wait", "-w", is_flag=True, help="Wait quietly for the end; exit 1 if the run fails.")
@click.option("--dry-run", is_flag=True, help="Validate and resolve, print what would run, send nothing.")
@click.option(
    "--no-check",
    is_flag=True,
    help="Queue even if no live worker serves a stage's type, or has the GPUs or memory it asks.",
)
@click.option(
    "--idempotency-key", metavar="KEY", help="A repeated submit with the same key returns the same run."
)
@click.option(
    "--timeout",
    type=float,
    help="With --follow/--wait: stop waiting after this many seconds (exit 3; the run goes on).",
)
@click.option("--items", is_flag=True, help="With --follow: show fan-out items too.")
@click.option("--no-cache", is_flag=True, help="Run every stage even if a cached output exists.")
@click.option("--force", is_flag=True, help="Run even if its depends_on/requires are not met (recorded).")
@click.option(
    "--wait-for-deps", is_flag=True, help="Wait until its depends_on/requires are met (at most --timeout)."
)
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
    force: bool,
    wait_for_deps: bool,
    as_json: bool,
) -> int:
    """Run a pipeline. Without CHORDFLOW_REDIS_URL, runs it on a private Redis and local workers.

    Exit 4 when its depends_on/requires are not met (each named, with its last status and age)."""
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
                force=force,
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
        force=force,
        wait_for_deps=wait_for_deps,
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
    force: bool = False,
    wait_for_deps: bool = False,
) -> int:
    if wait_for_deps and not force:

        def waiting(unmet: list[str]) -> None:
            say("waiting for dependencies:\n" + "\n".join(f"  {line}" for line in unmet), err=True)

        client.wait_for_dependencies(spec, timeout, on_wait=None if as_json else waiting)
    for name in unknown_upstreams(client, spec):
        say(
            f"warning: depends_on '{name}' names a pipeline that is not registered and never ran "
            "(a typo? `chordflow pipelines` lists the registered ones)",
            err=True,
        )
    with placement_warnings():  # what the placement check only warns of goes to stderr
        handle = client.submit(
            spec,
            selection=select,
            only=only,
            check_types=not no_check,
            check_capacity=not no_check,
            idempotency_key=key,
            no_cache=no_cache,
            force=force,
        )
    if not follow:
        print_json({"run_id": handle.run_id}) if as_json else say(handle.run_id)
        return EXIT_OK
    if not as_json:
        say(f"run {handle.run_id} submitted")
    try:
        if as_json or quiet:
            final = client.follow(handle.run_id, timeout)
        else:
            final = progress.follow(client, handle.run_id, console, timeout, items)
    except KeyboardInterrupt:  # show_outputs: the embedded fleet, which stops with this command
        return stopped_following(handle.run_id, goes_on=not show_outputs)
    status = run_view(client, handle.run_id)
    if as_json:
        print_json(to_json(status))
    else:
        progress.print_summary(status, show_outputs)
    return EXIT_OK if final == RunStatus.SUCCEEDED else EXIT_FAILED


def unknown_upstreams(client: Client, spec: Any) -> list[str]:
    """The pipelines `spec` depends on that are neither registered nor have a run on this Redis."""
    named = list(dict.fromkeys(d.pipeline for d in getattr(spec, "depends_on", ()) or ()))
    if not named:
        return []
    registered = client.store.records.registered_pipelines()
    return [name for name in named if name not in registered and not client.store.runs.recent_runs(1, name)]


def _when(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else ""


def attempts_table(status: dict[str, Any], items: bool = False) -> Table:
    """Every attempt of every stage (and item, with `items`): start, end, host, outcome, error."""
    table = Table(title=Text("attempts"), title_justify="left")
    for column in ("stage", "attempt", "host", "started", "ended", "took", "outcome", "error"):
        table.add_column(column)
    for sid, stage in status["stages"].items():
        rows = [(sid, a) for a in stage.get("attempt_history", [])]
        if items:
            rows += [
                (f"{sid}[{i['index']}]", a) for i in stage.get("items", []) for a in i["attempt_history"]
            ]
        for where, a in rows:
            error = a.get("error") or {}
            took = a.get("duration_s")
            table.add_row(
                term(where),
                f"{a['attempt']}" + (f" (retry {a['round']})" if a.get("round") else ""),
                term(a.get("host") or ""),
                _when(a.get("started_at")),
                _when(a.get("finished_at")),
                f"{took:.2f}s" if took is not None else "",
                term(a["outcome"], style=progress.STATE_STYLE.get(a["outcome"], "")),
                term(f"{error.get('type')}: {error.get('message', '')}"[:120] if error else ""),
            )
    return table


@click.command()
@click.argument("run_id")
@click.option("--items", is_flag=True, help="List each fan-out item too (state, host, attempts).")
@json_option
@command
def status(run_id: str, items: bool, as_json: bool) -> int:
    """A run's state and, per stage, state, attempts (each: host, start, end, outcome, error),
    queue, times, error and output."""
    check_run_id(run_id)
    client = client_from_env()
    data = run_view(client, run_id, items=items)
    origin = client.origin(run_id)  # triggered_by, forced, chain, schedule, skipped
    read_at = time.time()
    left = (
        progress.RunEta(client, run_id).left_s(data, read_at) if data["status"] == RunStatus.RUNNING else None
    )
    if as_json:
        eta = {"eta_s": _rounded(left), "read_at": iso(read_at)}  # the time left, as of when it was read
        print_json({**to_json(data), **eta, **({"origin": origin} if origin else {})})
    else:
        progress.print_summary(data, outputs=False, eta_s=left)
        console.print(attempts_table(data, items))
        for line in _origin_lines(origin):
            say(line)
    # the docs' table: 1 for a run that failed or was cancelled (as `watch` exits); a skipped run
    # never started, and says why
    return EXIT_FAILED if data["status"] in (RunStatus.FAILED, RunStatus.CANCELLED) else EXIT_OK


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _origin_lines(origin: dict[str, Any]) -> list[str]:
    """Where a run came from (`Client.origin`), for `status`."""
    lines = []
    if "triggered_by" in origin:
        by = origin["triggered_by"]
        lines.append(f"triggered by run {by['run_id']} of {by['pipeline'] or '?'}")
    if "forced" in origin:
        unmet = origin["forced"]["unmet"]
        lines.append("forced: " + ("; ".join(unmet) if unmet else "its dependencies were met anyway"))
    if "chain" in origin:
        lines.append(f"chain {origin['chain']} (`chordflow chain status {origin['chain']}`)")
    if RunStatus.SKIPPED in origin:
        lines.append(f"{RunStatus.SKIPPED}, not started: {origin[RunStatus.SKIPPED]}")
    return lines


def _watch_json(client: Client, run_id: str, timeout: float | None) -> str:
    """`watch --json`: one JSON object per event as it comes (typed), then the run's status."""

    run_eta = progress.RunEta(client, run_id)

    def emit(event: dict[str, str]) -> None:
        typed = typed_event(event)
        line: dict[str, Any] = {"event": typed}
        if typed.get("kind") == "stage":  # the time left as of `read_at` (null once the run ended)
            line["eta_s"] = _rounded(run_eta.now_left_s(client, run_id))
            line["read_at"] = iso(time.time())
        print_json_line(line)

    final = client.follow(run_id, timeout, on_event=emit)
    print_json_line({"status": to_json(run_view(client, run_id))})
    return final


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float, help="Stop after this many seconds (exit 3; the run goes on).")
@click.option("--items", is_flag=True, help="Show fan-out items too.")
@json_option
@command
def watch(run_id: str, timeout: float | None, items: bool, as_json: bool) -> int:
    """Follow a run live until it really ends (across `retry`); exit 0 if it succeeded, 1 if not.

    With --json: one JSON object per line, {"event": ...} as each comes, then {"status": ...}."""
    check_run_id(run_id)
    client = client_from_env()
    client.handle(run_id)
    try:
        if as_json:
            final = _watch_json(client, run_id, timeout)
            return EXIT_OK if final == RunStatus.SUCCEEDED else EXIT_FAILED
        final = progress.follow(client, run_id, console, timeout, items)
    except KeyboardInterrupt:
        return stopped_following(run_id)
    progress.print_summary(run_view(client, run_id), outputs=False)
    return EXIT_OK if final == RunStatus.SUCCEEDED else EXIT_FAILED


COMMANDS = (submit, status, watch)
