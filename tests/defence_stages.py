"""Stage types that misbehave as a hostile or careless stage would (`CHORDFLOW_IMPORTS=tests.defence_stages`):
each counts its executions, then raises what it is told to."""

from __future__ import annotations

import sys
import time

from orchestration import RetryPolicy, stage
from tests.stages import _count


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Shouting(BaseException):
    """Not an Exception: a bare BaseException subclass."""


RAISES = {
    "unprintable": lambda: Unprintable(),
    "exit": lambda: SystemExit(3),  # what argparse's parser.error does
    "interrupt": lambda: KeyboardInterrupt(),
    "base": lambda: Shouting("loud"),
    "generator_exit": lambda: GeneratorExit(),
}


@stage("test.raises", retry=RetryPolicy(max_attempts=2, backoff="fixed", delay=0.05))
def raises(ctx, what: str = "unprintable") -> None:
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    if what == "sys.exit":
        sys.exit(3)
    raise RAISES[what]()


@stage("test.nan")
def nan(ctx) -> float:
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    return float("nan")


@stage("test.progress")
def progress(ctx, steps: int = 4, seconds: float = 0.4) -> int:
    """Report progress step by step (ctx.progress), sleeping between steps."""
    for done in range(steps + 1):
        ctx.progress(done, steps)
        time.sleep(seconds)
    return steps
