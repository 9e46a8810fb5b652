"""The `chordflow` command line: the group, its commands, and the console script.

Each command module (`files`, `runs`, `logs`, `control`, `fleet`, `pipelines`, `dashboard`) lists its commands in `COMMANDS`;
this module adds them to `cli`, then the commands other installed packages declare in the
`chordflow.commands` entry-point group (the worker package adds `chordflow worker` that way,
so nothing here imports it). Exit codes and shared helpers: `_common.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib import metadata

import click

from orchestration.cli import control, dashboard, files, fleet, logs, pipelines, runs
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    UNREACHABLE,
    report_error,
    say,
    unreachable,
    version,
)
from orchestration.engine import redis_url
from orchestration.errors import ChordflowError

COMMAND_GROUP = "chordflow.commands"


class ChordflowGroup(click.Group):
    """The built-in commands, then those of the `chordflow.commands` entry points, loaded only when
    named (so `chordflow validate` never imports a plugin; a plugin cannot replace a built-in)."""

    def _plugins(self) -> dict[str, metadata.EntryPoint]:
        return {e.name: e for e in metadata.entry_points(group=COMMAND_GROUP) if e.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and (entry := self._plugins().get(cmd_name)) is not None:
            found = entry.load()
        return found


@click.group(
    cls=ChordflowGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(version(), prog_name="chordflow")
def cli() -> None:
    """Chordflow: pipelines of stages on a fleet of Celery workers, state in Redis."""


# -- entry point --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command, return its exit code (0 ok, 1 failed, 2 invalid input)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="chordflow", standalone_mode=False
        )
    except click.ClickException as exc:  # usage errors (exit 2) and the like
        exc.show()
        return exc.exit_code
    except click.Abort:
        say("aborted", err=True)
        return 130
    except BrokenPipeError:  # `chordflow plan x | head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ChordflowError as exc:  # raised outside a command body (e.g. while parsing options)
        return report_error(exc)
    except UNREACHABLE as exc:  # a command without `command`
        return report_error(unreachable(exc))
    except Exception as exc:
        if os.environ.get("CHORDFLOW_DEBUG"):
            raise
        say(
            f"error: unexpected {type(exc).__name__}: {redis_url.mask(str(exc))} "
            "(set CHORDFLOW_DEBUG=1 for the traceback)",
            err=True,
        )
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


for _module in (files, runs, logs, control, fleet, pipelines, dashboard):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
