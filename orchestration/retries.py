"""Retry policy arithmetic: pure functions, no I/O.

`countdown(policy, attempt)` is the one place a retry delay is computed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from .spec import Backoff, RetryPolicy

DEFAULT_POLICY = RetryPolicy(max_attempts=1)


def countdown(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.

    fixed: delay; linear: delay * attempt; exponential: delay * multiplier ** (attempt - 1);
    capped by max_delay; with jitter, a uniform draw from [delay/2, delay] ("equal jitter").
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if policy.backoff is Backoff.FIXED:
        delay = policy.delay
    elif policy.backoff is Backoff.LINEAR:
        delay = policy.delay * attempt
    else:
        delay = policy.delay * policy.multiplier ** min(attempt - 1, 64)
    if policy.max_delay is not None:
        delay = min(delay, policy.max_delay)
    if policy.jitter:
        delay = (rng or random).uniform(delay / 2, delay)
    return delay


def _names(exc_type: type[BaseException]) -> Iterable[str]:
    for klass in exc_type.__mro__:
        yield klass.__name__
        yield f"{klass.__module__}.{klass.__qualname__}"


def is_retryable(policy: RetryPolicy, exc_type: type[BaseException]) -> bool:
    """Whether the policy retries this exception class (by its own or a base class's name)."""
    names = set(_names(exc_type))
    if names & set(policy.give_up_on):
        return False
    return not policy.retry_on or bool(names & set(policy.retry_on))


def resolve_policy(*layers: RetryPolicy | None) -> RetryPolicy:
    """Merge layers, later ones' explicitly set fields winning (type < defaults < stage)."""
    policy = DEFAULT_POLICY
    for layer in layers:
        if layer is not None:
            policy = layer.merged_over(policy)
    return policy
