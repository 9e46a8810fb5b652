"""Retry policy arithmetic and the failure decision: pure functions, no I/O.

`countdown(policy, attempt)` is the one place a retry delay is computed, and
`decide(policy, exc, attempt, ...)` the one place that decides what a failed
attempt leads to: another attempt, the fallback, or the stage's failure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from orchestration.errors import FailStage, OutputTooLarge, RetryStage
from orchestration.language.options import Backoff, RetryPolicy

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


class Verdict(StrEnum):
    RETRY = "retry"  # another attempt after `delay_s`
    FALLBACK = (
        "fallback"  # not a state (a verdict); retries are over: the stage's fallback supplies its output
    )
    FAIL = "fail"  # the stage fails; the run goes on (critical: false)
    FAIL_AND_CASCADE = "fail_and_cascade"  # the stage fails and so does the run: its dependents
    #                                        become upstream_failed, or fail_fast cancels the rest


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retryable: bool  # whether the policy retries this exception at all
    delay_s: float = 0.0  # with RETRY: seconds before the next attempt


def decide(
    policy: RetryPolicy,
    exc: BaseException,
    attempt: int,
    *,
    has_fallback: bool,
    critical: bool,
    rng: random.Random | None = None,
) -> Decision:
    """What follows a failed attempt `attempt` (1-based) that raised `exc`.

    A stage's RetryStage always retries (with its own delay if it names one) while attempts
    are left; FailStage, CommitRefused and OutputTooLarge never retry; anything else retries
    when the policy's retry_on/give_up_on say so. When no retry follows, a fallback wins over
    failing, and a critical stage's failure cascades.
    """
    if isinstance(exc, RetryStage):
        retryable = True
    elif isinstance(exc, (FailStage, OutputTooLarge)):
        retryable = False
    else:
        retryable = is_retryable(policy, type(exc))
    if retryable and attempt < policy.max_attempts:
        if isinstance(exc, RetryStage) and exc.delay_s is not None:
            delay = exc.delay_s
        else:
            delay = countdown(policy, attempt, rng)
        return Decision(Verdict.RETRY, True, delay)
    if has_fallback:
        return Decision(Verdict.FALLBACK, retryable)
    return Decision(Verdict.FAIL_AND_CASCADE if critical else Verdict.FAIL, retryable)
