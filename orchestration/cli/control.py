"""Commands that act on a run: cancel, pause, resume, retry (`--json` on each)."""

from __future__ import annotations

import click

from orchestration.cli import progress
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    client_from_env,
    command,
    console,
    json_option,
    print_json,
    say,
    stopped_following,
)
from orchestration.cli.runview import run_view
from orchestration.language.ids import check_run_id
from orchestration.states import RunStatus, State


def _control(op: str, run_id: str, as_json: bool = False) -> int:
    check_run_id(run_id)
    client = client_from_env()
    outcome = getattr(client, op)(run_id)
    ok = outcome in (RunStatus.CANCELLED, RunStatus.PAUSED, "resumed", State.RETRYING)
    if as_json:
        status = client.store.runs.run_status(run_id)
        print_json({"run_id": run_id, "action": op, "ok": ok, "outcome": outcome, "status": status})
    else:
        say(f"run {run_id}: {outcome}")
    return EXIT_OK if ok else EXIT_FAILED


@click.command()
@click.argument("run_id")
@json_option
@command
def cancel(run_id: str, as_json: bool) -> int:
    """Cancel a run: revoke what runs, cancel what waits."""
    return _control("cancel", run_id, as_json)


@click.command()
@click.argument("run_id")
@json_option
@command
def pause(run_id: str, as_json: bool) -> int:
    """Pause a run: nothing new starts; running stages finish."""
    return _control("pause", run_id, as_json)


@click.command()
@click.argument("run_id")
@json_option
@command
def resume(run_id: str, as_json: bool) -> int:
    """Resume a paused run."""
    return _control("resume", run_id, as_json)


@click.command("retry")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Follow the run until it ends.")
@json_option
@command
def retry_command(run_id: str, follow: bool, as_json: bool) -> int:
    """Run a failed run again from the point of failure, reusing every output that succeeded."""
    code = _control("retry", run_id, as_json)
    if code or not follow:
        return code
    client = client_from_env()
    try:
        final = client.follow(run_id) if as_json else progress.follow(client, run_id, console)
    except KeyboardInterrupt:
        return stopped_following(run_id)
    if not as_json:
        progress.print_summary(run_view(client, run_id), outputs=False)
    return EXIT_OK if final == RunStatus.SUCCEEDED else EXIT_FAILED


COMMANDS = (cancel, pause, resume, retry_command)
