"""`chordflow logs`: the log lines of a run's attempts, live with `--follow`."""

from __future__ import annotations

import click

from orchestration.cli import logview
from orchestration.cli._common import (
    EXIT_OK,
    client_from_env,
    command,
    json_option,
    say,
    stopped_following,
)
from orchestration.errors import StageNotFound
from orchestration.language.ids import check_run_id, check_stage_id


@click.command()
@click.argument("run_id")
@click.argument("stage_id", required=False)
@click.option("--attempt", type=click.IntRange(1), help="Only this attempt of STAGE (1 is the first).")
@click.option("--item", type=click.IntRange(0), help="Only this fan-out item of STAGE (0 is the first).")
@click.option(
    "--follow", "-f", is_flag=True, help="Print lines as they come, until the attempt/stage/run ends."
)
@json_option
@command
def logs(
    run_id: str, stage_id: str | None, attempt: int | None, item: int | None, follow: bool, as_json: bool
) -> int:
    """Log lines of a run's stages, per attempt and item: ctx.log lines and shell output, each with
    its time and level. With --json, one JSON object per line."""
    check_run_id(run_id)
    if stage_id is not None:
        check_stage_id(stage_id)
    elif attempt is not None or item is not None:
        raise click.UsageError("--attempt and --item need a STAGE")
    client = client_from_env()
    graph = client.store.graph(run_id)
    ids = [n.id for n in graph.nodes]
    if stage_id is not None and stage_id not in ids:
        raise StageNotFound(run_id, stage_id, ids)
    wanted = [stage_id] if stage_id else ids
    if follow:
        try:
            logview.follow_logs(client, run_id, wanted, stage_id, item, attempt, as_json)
        except KeyboardInterrupt:
            return stopped_following(run_id)
        return EXIT_OK
    shown = logview.print_logs(client, run_id, wanted, item, attempt, as_json)
    if not shown and not as_json:
        which = " ".join(
            x
            for x in (
                stage_id,
                f"item {item}" if item is not None else "",
                f"attempt {attempt}" if attempt else "",
            )
            if x
        )
        say(f"no log lines for {which or 'this run'} (yet)", err=True)
    return EXIT_OK


COMMANDS = (logs,)
