"""`chordflow worker` (also `python -m workers`)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import Any

import click

from orchestration.settings import Settings

from .main import run_worker


def _finite_gb(value: Any) -> float | None:
    """--memory-gb as given, if it is a finite number of 0 or more (the ledger admits stages
    against it, and health reports it: NaN or infinity would make both wrong)."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise click.BadParameter(f"{value!r} is not a finite number of 0 or more", param_hint="'--memory-gb'")
    return value


@click.command("worker")
@click.option(
    "--queues", "-Q", help="Comma-separated queues to serve (default: what this machine can serve)."
)
@click.option("--concurrency", "-c", type=int, help="Stage processes for cpu/highmem stages (default: CPUs).")
@click.option("--hostname", "-n", help="Name recorded on every stage this worker runs.")
@click.option(
    "--gpus",
    type=click.IntRange(min=0),
    help="GPUs to use, 0 or more (default: CUDA_VISIBLE_DEVICES or nvidia-smi).",
)
@click.option(
    "--memory-gb",
    type=float,
    callback=lambda ctx, param, value: _finite_gb(value),
    help="Memory to advertise in GB, a finite number, 0 or more (default: the machine's).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    help="Module that registers stage types (repeatable); found from the current directory too.",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
    help="prefork enforces hard time limits; threads suits many I/O-bound stages.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--gpu-only", is_flag=True, hidden=True)
def worker(
    queues: str | None,
    concurrency: int | None,
    hostname: str | None,
    gpus: int | None,
    memory_gb: float | None,
    imports: tuple[str, ...],
    pool: str,
    loglevel: str,
    gpu_only: bool,
) -> None:
    """Serve stages from this machine's queues."""
    settings = Settings.load()
    if (imports or settings.imports) and "" not in sys.path and os.getcwd() not in sys.path:
        # `--import mystages` finds ./mystages.py, as Celery's -A does (the console script's own
        # sys.path has its bin directory first, not the current one)
        sys.path.insert(0, os.getcwd())
    if not settings.redis_url:
        raise click.UsageError("set CHORDFLOW_REDIS_URL to the Redis the pipeline runs on")
    for module in (*settings.imports, *imports):
        _check_importable(module)
    code = run_worker(
        settings,
        [q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        concurrency,
        hostname,
        gpus,
        memory_gb,
        list(imports),
        loglevel.upper(),
        gpu_only,
        pool,
    )
    raise SystemExit(code)


def _check_importable(module: str) -> None:
    """A module named by --import (or CHORDFLOW_IMPORTS) that cannot be found is exit 2, saying where
    modules are looked for; one found is imported by the worker as before."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):
        found = False
    if not found:
        raise click.UsageError(
            f"cannot import {module!r} (--import): no such module. Modules are found from the current "
            f"directory ({os.getcwd()}) and PYTHONPATH: start the worker in your project's directory, "
            "or add the directory that holds the module to PYTHONPATH"
        )
