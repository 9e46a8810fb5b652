"""Stage types of the observability tests (`CHORDFLOW_IMPORTS='["tests.observe_stages"]'`)."""

from __future__ import annotations

import time
from typing import Any

from orchestration import RetryPolicy, stage


@stage("observe.items")
def make_items(ctx: Any, n: int = 3) -> list[int]:
    """Log with %-style arguments, at two levels, then return `n` items."""
    ctx.log.info("making %s items", n)
    ctx.log.warning("for %(who)s only", {"who": "tests"})
    return list(range(n))


@stage("observe.flaky", retry=RetryPolicy(max_attempts=3, backoff="fixed", delay=0.2))
def flaky(ctx: Any, fail_times: int = 2) -> int:
    """Log a line, then fail with ConnectionError on the first `fail_times` attempts."""
    ctx.log.info("attempt %d: connecting", ctx.attempt)
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"attempt {ctx.attempt}: the service hung up")
    ctx.log.info("attempt %d: connected", ctx.attempt)
    return ctx.attempt


@stage("observe.item_logger")
def item_logger(ctx: Any, seconds: float = 0.0) -> Any:
    """Log which item this is; sleep; return the item."""
    ctx.log.info("item %s of the fan-out", ctx.item_index)
    time.sleep(seconds)
    return ctx.item
