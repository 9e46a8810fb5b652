"""The `chordflow` command line: the group, its commands, and the console script.

The built-in commands live in the command modules (`files`, `runs`, `logs`, `control`, `fleet`,
`pipelines`, `dashboard`) and are named in `BUILTIN` below; other installed packages add theirs
through the `chordflow.commands` entry-point group (the worker package adds `chordflow worker`
that way, so nothing here imports it). A command's module is imported only when that command
runs: `chordflow validate` never loads Celery, kombu or redis, and `chordflow --help` imports no
command module at all (it reads their one-line summaries from the source). Exit codes and shared
helpers: `_common.py`.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from collections.abc import Sequence
from functools import cache
from importlib import import_module, metadata, util

import click

from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    report_error,
    say,
    unreachable,
    unreachable_errors,
    version,
)
from orchestration.errors import ChordflowError

COMMAND_GROUP = "chordflow.commands"

# command name -> "module:function" of its click command
BUILTIN: dict[str, str] = {
    "validate": "orchestration.cli.files:validate",
    "plan": "orchestration.cli.plan:plan",
    "graph": "orchestration.cli.files:graph_command",
    "schema": "orchestration.cli.files:schema",
    "templates": "orchestration.cli.files:templates_command",
    "init": "orchestration.cli.files:init",
    "submit": "orchestration.cli.runs:submit",
    "status": "orchestration.cli.runs:status",
    "watch": "orchestration.cli.runs:watch",
    "runs": "orchestration.cli.runlist:runs",
    "logs": "orchestration.cli.logs:logs",
    "cancel": "orchestration.cli.control:cancel",
    "pause": "orchestration.cli.control:pause",
    "resume": "orchestration.cli.control:resume",
    "retry": "orchestration.cli.control:retry_command",
    "flower": "orchestration.cli.fleet:flower",
    "beat": "orchestration.cli.fleet:beat",
    "schedule": "orchestration.cli.fleet:schedule",
    "health": "orchestration.cli.fleet:health",
    "stages": "orchestration.cli.fleet:stages",
    "pipelines": "orchestration.cli.pipelines:pipelines",
    "assets": "orchestration.cli.pipelines:assets",
    "chain": "orchestration.cli.pipelines:chain",
    "dashboard": "orchestration.cli.dashboard:dashboard_command",
}


@cache
def summary(target: str) -> str | None:
    """The help text of the command at "module:function", read from its docstring in the module's
    source without importing the module; None when the source cannot be read."""
    module, _, function = target.partition(":")
    try:
        found = util.find_spec(module)
        origin = found.origin if found is not None else None
        if origin is None or not origin.endswith(".py"):
            return None
        with open(origin, encoding="utf-8") as source:
            tree = ast.parse(source.read(), origin)
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            doc = ast.get_docstring(node)
            return inspect.cleandoc(doc).split("\f")[0] if doc else ""
    return None


class ChordflowGroup(click.Group):
    """The built-in commands, then those of the `chordflow.commands` entry points (a plugin cannot
    replace a built-in); each loaded only when named, so `chordflow validate` imports neither a
    plugin nor another command's module."""

    def _targets(self) -> dict[str, str]:
        plugins = {e.name: e.value for e in metadata.entry_points(group=COMMAND_GROUP)}
        return {**plugins, **BUILTIN}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._targets()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and (target := self._targets().get(cmd_name)) is not None:
            module, _, attribute = target.partition(":")
            loaded = getattr(import_module(module), attribute)
            if isinstance(loaded, click.Command):
                found = loaded
                self.add_command(found, cmd_name)
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The list of `chordflow --help`, from the commands' docstrings (`summary`); a command
        whose source cannot be read is loaded to ask it."""
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        targets = self._targets()
        for name in names:
            text = summary(targets[name]) if name in targets and name not in self.commands else None
            if text is None:
                command = self.get_command(ctx, name)
                if command is None or command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, click.Command(name, help=text).get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


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
    except Exception as exc:
        if isinstance(exc, unreachable_errors()):  # a command without `command`
            return report_error(unreachable(exc))
        if os.environ.get("CHORDFLOW_DEBUG"):
            raise
        from orchestration.engine import redis_url  # here: it loads redis-py, for its URL parser

        say(
            f"error: unexpected {type(exc).__name__}: {redis_url.mask(str(exc))} "
            "(set CHORDFLOW_DEBUG=1 for the traceback)",
            err=True,
        )
        return EXIT_FAILED
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
