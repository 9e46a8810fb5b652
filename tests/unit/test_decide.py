"""The one decision point for a failed attempt: retry, fallback, fail, or fail and cascade."""

from __future__ import annotations

import random
import re
from importlib import resources

import pytest

from orchestration.engine.retries import Verdict, decide
from orchestration.errors import CommitRefused, FailStage, OutputTooLarge, RedisRefusedWrite, RetryStage
from orchestration.language.options import RetryPolicy
from orchestration.states import KEPT_ON_RETRY, TERMINAL, RunStatus, State, lua_prelude

THREE = RetryPolicy(max_attempts=3, backoff="fixed", delay=2)


def test_a_retryable_error_with_attempts_left_retries_after_the_policy_delay():
    d = decide(THREE, ConnectionError("down"), 1, has_fallback=True, critical=True)
    assert (d.verdict, d.retryable, d.delay_s) == (Verdict.RETRY, True, 2)


def test_the_last_attempt_falls_back_when_there_is_a_fallback():
    d = decide(THREE, ConnectionError("down"), 3, has_fallback=True, critical=True)
    assert d.verdict is Verdict.FALLBACK and d.retryable


@pytest.mark.parametrize(("critical", "verdict"), [(True, Verdict.FAIL_AND_CASCADE), (False, Verdict.FAIL)])
def test_without_a_fallback_the_stage_fails_and_a_critical_one_cascades(critical, verdict):
    assert decide(THREE, ValueError("x"), 3, has_fallback=False, critical=critical).verdict is verdict


@pytest.mark.parametrize(
    "exc", [FailStage("no"), CommitRefused("rows is not a number"), OutputTooLarge("r", "s", 10, 1)]
)
def test_errors_that_never_retry(exc):
    d = decide(THREE, exc, 1, has_fallback=False, critical=True)
    assert d.verdict is Verdict.FAIL_AND_CASCADE and not d.retryable


def test_retry_stage_retries_whatever_retry_on_says_with_its_own_delay():
    policy = RetryPolicy(max_attempts=2, retry_on=["ConnectionError"])
    d = decide(policy, RetryStage("again", delay_s=0.5), 1, has_fallback=False, critical=True)
    assert (d.verdict, d.delay_s) == (Verdict.RETRY, 0.5)
    assert (
        decide(policy, RetryStage("again"), 2, has_fallback=False, critical=True).verdict
        is Verdict.FAIL_AND_CASCADE
    )


def test_retry_on_and_give_up_on_decide_by_class_name():
    policy = RetryPolicy(max_attempts=5, retry_on=["ConnectionError"], give_up_on=["ConnectionRefusedError"])
    assert (
        decide(policy, ConnectionResetError(), 1, has_fallback=False, critical=True).verdict is Verdict.RETRY
    )
    assert (
        decide(policy, ConnectionRefusedError(), 1, has_fallback=False, critical=True).verdict
        is Verdict.FAIL_AND_CASCADE
    )
    assert decide(policy, KeyError("k"), 1, has_fallback=False, critical=False).verdict is Verdict.FAIL


def test_redis_refusing_a_write_is_retried_by_policy_like_any_error():
    exc = RedisRefusedWrite("OOM command not allowed when used memory > 'maxmemory'")
    assert "out of memory" in str(exc)
    assert decide(THREE, exc, 1, has_fallback=False, critical=True).verdict is Verdict.RETRY
    assert (
        decide(RetryPolicy(max_attempts=1), exc, 1, has_fallback=False, critical=True).verdict
        is Verdict.FAIL_AND_CASCADE
    )


def test_jitter_draws_within_the_policy_bounds():
    policy = RetryPolicy(max_attempts=3, backoff="fixed", delay=2, jitter=True)
    d = decide(policy, ValueError(), 1, has_fallback=False, critical=True, rng=random.Random(7))
    assert 1.0 <= d.delay_s <= 2.0


def test_the_lua_prelude_spells_every_state_as_the_enums_do():
    prelude = lua_prelude()
    for state in State:
        assert f"{state.name} = '{state.value}'" in prelude
    for status in RunStatus:
        assert f"{status.name} = '{status.value}'" in prelude
    assert KEPT_ON_RETRY <= TERMINAL


def test_no_script_spells_a_state_by_hand():
    """Scripts use S.X / R.X from the prelude, so a state's name lives only in states.py."""
    lua = resources.files("orchestration.engine").joinpath("lua")
    names = "|".join(s.value for s in State)
    for script in (
        "begin.lua",
        "finish.lua",
        "retry.lua",
        "renew.lua",
        "fanout.lua",
        "reopen.lua",
        "control.lua",
    ):
        text = lua.joinpath(script).read_text(encoding="utf-8")
        code = "\n".join(line.split("--")[0] for line in text.splitlines())
        assert not re.search(rf"'({names})'", code), script
