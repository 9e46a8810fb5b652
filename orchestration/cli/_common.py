"""What every `chordflow` command shares: printing, exit codes, options, and reading a file.

Exit codes (docs/cli.md): 0 ok (a run succeeded), 1 failed (a run failed or was cancelled, Redis
refused, an unexpected error), 2 invalid input (a pipeline problem, a bad option, a malformed run
id, stage id or idempotency key, a stage the run does not have), 3 timed out waiting for a run
(`--timeout`: the run goes on), 130 interrupted (Ctrl-C while following: the run goes on). An
`InvalidPipeline` prints every problem, one per line as `file:line: stage 'x': message`; no
error prints a traceback unless CHORDFLOW_DEBUG=1.

The command modules (files, runs, fleet, dashboard) import this one and nothing else of `cli/`;
`main.py` gathers their commands into the `chordflow` group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestration.cli import json_out
from orchestration.errors import ChordflowError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestration.api import Client
    from orchestration.engine.redis_url import RedisUnreachable
    from orchestration.graph.resolve import RunGraph
    from orchestration.language.spec import PipelineSpec
    from orchestration.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@functools.cache
def _consoles() -> dict[str, Console]:
    """`console` and `errors` (see `__getattr__`), the rich consoles of stdout and stderr."""
    from rich.console import Console

    return {"console": Console(soft_wrap=True), "errors": Console(stderr=True, soft_wrap=True)}


# -- shared helpers -------------------------------------------------------------------------


def say(text: str, err: bool = False) -> None:
    """Print plain text: no rich markup (names, problems and ids may hold `[...]`) and no control
    character but newline and tab (a name or a log line may hold an escape sequence: it is
    printed as the visible text `\\x1b[2J`)."""
    from orchestration.graph.render import terminal_safe

    _consoles()["errors" if err else "console"].print(
        terminal_safe(text), markup=False, highlight=False, emoji=False
    )


def print_json(data: Any) -> int:
    """Print `data` as JSON on stdout (`typed`); return EXIT_OK, so a command may `return
    print_json(...)`. (JSON escapes C0 controls itself; DEL and C1 controls are escaped here too.)"""
    click.echo(json_out.document(data))
    return EXIT_OK


def print_json_line(data: Any) -> None:
    """Print `data` (`typed`) as one line of JSON (a stream: `logs --json`, `watch --json`)."""
    click.echo(json_out.line(data))


def stopped_following(run_id: str, goes_on: bool = True) -> int:
    """Say what Ctrl-C while following a run did (and did not do); return EXIT_INTERRUPTED."""
    if goes_on:
        say(
            f"stopped following run {run_id}; the run goes on "
            f"(`chordflow watch {run_id}` follows it again, `chordflow cancel {run_id}` stops it)",
            err=True,
        )
    else:
        say(
            f"stopped: run {run_id} ends with this command (it ran on a private Redis and local workers)",
            err=True,
        )
    return EXIT_INTERRUPTED


def report_error(exc: ChordflowError, as_json: bool = False) -> int:
    """Print `exc` for a person (stderr) or a program (`--json`, stdout); return its exit code."""
    problems = getattr(exc, "problems", None)
    if as_json:
        listed = [
            {"message": p.message, "stage_id": p.stage_id, "line": p.line, "source": p.source}
            for p in problems or []
        ]
        print_json({"ok": False, "error": type(exc).__name__, "message": str(exc), "problems": listed})
    elif problems:
        count = len(problems)
        say(f"error: {count} problem{'s' if count != 1 else ''} found:", err=True)
        for problem in problems:
            say(str(problem), err=True)
    else:
        say(f"error: {exc}", err=True)
    return exc.exit_code


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a Redis that does not answer, or something else than a Redis at its address, raises.
    Empty while redis-py is not imported: a command that never loaded it cannot have met one, and
    `chordflow validate` must not pay for importing it."""
    redis = sys.modules.get("redis")
    if redis is None:
        return ()
    return (redis.ConnectionError, redis.TimeoutError, redis.exceptions.InvalidResponse, redis.ReadOnlyError)


def __getattr__(name: str) -> Any:
    # `console` and `errors`, the rich consoles of stdout and stderr, are made when first asked
    # for: `chordflow worker` goes through this module and never prints through them, so a
    # worker's processes never load rich.
    if name in ("console", "errors"):
        return _consoles()[name]
    # UNREACHABLE, the tuple of `unreachable_errors()`, for modules that need redis anyway
    if name == "UNREACHABLE":
        import redis  # noqa: F401  (imported for its exception classes)

        return unreachable_errors()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unreachable(exc: BaseException, urls: Sequence[str] = ()) -> RedisUnreachable:
    """`cannot reach Redis at redis://host:port/db (reason)` for a connection error, naming the
    Redis the command connected to (else the configured one), its password masked."""
    url = urls[0] if urls else os.environ.get("CHORDFLOW_REDIS_URL")
    reason = str(exc).strip().rstrip(".") or type(exc).__name__
    redis = sys.modules.get("redis")
    if redis is not None and isinstance(exc, redis.AuthenticationError):
        reason = f"it refused the credentials: {reason}"
    if redis is not None and isinstance(exc, redis.ReadOnlyError):
        reason = "it is read-only: a replica, or a failover under way (`chordflow health` shows its role)"
    from orchestration.engine.redis_url import RedisUnreachable

    return RedisUnreachable(url, reason)


def command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Turn a command's return value and ChordflowErrors into its exit code (under click's
    standalone mode too, so CliRunner tests see the same codes as the console script).

    The command runs in `redis_url.fail_fast()`: its Redis clients give up after
    `redis_timeout_s`, and a Redis it cannot reach is `error: cannot reach Redis at ...`, exit 1."""
    return _wrapped(fn, fail_fast=True)


def offline_command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """`command` for a command on files that needs no Redis (`validate`, `schema`, ...): it runs
    without the fail-fast mode, whose module loads redis-py (a command that may read a Redis
    enters it itself, as `graph RUN` does)."""
    return _wrapped(fn, fail_fast=False)


def _wrapped(fn: Callable[..., int | None], fail_fast: bool) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        as_json = bool(kwargs.get("as_json"))
        with contextlib.ExitStack() as stack:
            urls: Sequence[str] = ()
            if fail_fast:
                from orchestration.engine import redis_url

                urls = stack.enter_context(redis_url.fail_fast()).urls
            try:
                code = fn(*args, **kwargs)
            except ChordflowError as exc:
                code = report_error(exc, as_json=as_json)
            except Exception as exc:
                if not isinstance(exc, unreachable_errors()):
                    raise
                code = report_error(unreachable(exc, urls), as_json=as_json)
        if code:
            raise click.exceptions.Exit(code)

    return wrapper


def redis_settings() -> Settings:
    """The settings of a command that needs a Redis: CHORDFLOW_REDIS_URL set (else a usage error)
    and well-formed (else InvalidRedisUrl, exit 2)."""
    settings = settings_from_env()
    if not settings.redis_url:
        raise click.UsageError("set CHORDFLOW_REDIS_URL to the Redis your runs live in")
    from orchestration.engine import redis_url

    redis_url.check(settings.redis_url)
    return settings


def settings_from_env() -> Settings:
    """The one Settings object of this invocation (CHORDFLOW_* and CHORDFLOW_CONFIG)."""
    from pydantic import ValidationError

    from orchestration.settings import Settings

    try:
        return Settings.load()
    except (ValidationError, ValueError, OSError) as exc:
        say(f"error: invalid configuration (CHORDFLOW_* or CHORDFLOW_CONFIG): {exc}", err=True)
        raise click.exceptions.Exit(EXIT_INVALID) from None


def load_spec(file: Path, sets: Sequence[str], settings: Settings) -> PipelineSpec:
    """Read and validate `file` with `--set NAME=VALUE` overrides; raises InvalidPipeline."""
    from orchestration.language.loader import parse_override
    from orchestration.language.validation import load_pipeline

    overrides = dict(parse_override(item) for item in sets)
    return load_pipeline(file, overrides, settings=settings)


def load_graph(
    file: Path, sets: Sequence[str], select: str | None, only: bool, settings: Settings | None = None
) -> RunGraph:
    from orchestration.graph.resolve import resolve

    settings = settings or settings_from_env()
    return resolve(load_spec(file, sets, settings), settings, select, only)


file_argument = click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set a variable (repeatable); the value is read as YAML: 30, true, text.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
select_option = click.option(
    "--select", metavar="EXPR", help="Part of the pipeline: ids, globs, tag:NAME, 10-30, !id, x+, +x, 2+x."
)
only_option = click.option(
    "--only", is_flag=True, help="Only the selected stages, not the upstream ones they need."
)


def pipeline_options(fn: Callable) -> Callable:
    """FILE, --set, --select and --only."""
    for option in (only_option, select_option, set_option, file_argument):
        fn = option(fn)
    return fn


def version() -> str:
    try:
        return metadata.version("chordflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def client_from_env() -> Client:
    """A client of CHORDFLOW_REDIS_URL (checked: exit 2 if malformed). Built inside a command,
    its Redis client fails fast (`redis_url.fail_fast`)."""
    from orchestration.api import Client  # here: commands without Redis do not load the client

    return Client(redis_settings())
