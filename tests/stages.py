"""Stage types the integration tests register in their workers (`--import tests.stages`)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from orchestration import RetryPolicy, hooks, stage

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        tls = (
            {"ssl_ca_certs": os.environ["CHORDFLOW_SSL_CA_CERTS"]}
            if "CHORDFLOW_SSL_CA_CERTS" in os.environ
            else {}
        )
        _client = redis.Redis.from_url(os.environ["CHORDFLOW_REDIS_URL"], decode_responses=True, **tls)
    return _client


def _count(name: str) -> int:
    return _redis().incr(f"test:count:{name}")


@stage("test.record")
def record(ctx, seconds: float = 0.0, output: Any = None, name: str | None = None) -> Any:
    """Count this execution, track the peak of concurrent executions of `name`, sleep, return."""
    r = _redis()
    key = name or ctx.stage_id
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    running = r.incr(f"test:running:{ctx.run_id}:{key}")
    r.execute_command("SET", f"test:peak:{ctx.run_id}:{key}", running, "GET")
    peak_key = f"test:peak:{ctx.run_id}:{key}"
    r.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        peak_key + ":max",
        running,
    )
    try:
        if seconds:
            time.sleep(seconds)
    finally:
        r.decr(f"test:running:{ctx.run_id}:{key}")
    if output is not None:
        return output
    return ctx.item if ctx.item_index is not None else {"stage": ctx.stage_id, "inputs": sorted(ctx.inputs)}


@stage("test.echo_inputs")
def echo_inputs(ctx) -> dict[str, Any]:
    """The outputs it read, as it read them (a missing one shows as null)."""
    return dict(ctx.inputs)


@stage("test.square")
def square(ctx) -> int:
    return ctx.item * ctx.item


@stage("test.context_writer")
def context_writer(ctx, key: str, value: Any, metric: str = "rows", amount: float = 1) -> str:
    ctx.context.set(key, value)
    ctx.context.incr("writers", 1)
    ctx.metrics.increment(metric, amount)
    return os.environ.get("CHORDFLOW_TEST_HOST", "")


@stage("test.context_reader")
def context_reader(ctx, keys: list[str]) -> dict[str, Any]:
    return {k: ctx.context.get(k) for k in keys}


@stage("test.gpu_train", queue="gpu")
def gpu_train(ctx, seconds: float = 0.3) -> str:
    time.sleep(seconds)
    return "trained"


@stage("test.big_output")
def big_output(ctx, size: int = 2_000_000) -> str:
    return "x" * size


@stage("test.flaky", retry=RetryPolicy(max_attempts=3, backoff="fixed", delay=0.1))
def flaky(ctx, fail_times: int = 1) -> int:
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"flaky attempt {ctx.attempt}")
    return ctx.attempt


_ERRORS = {"ConnectionError": ConnectionError, "ValueError": ValueError, "TimeoutError": TimeoutError}


@stage("test.timed_flaky")
def timed_flaky(ctx, fail_times: int = 2, error: str = "ConnectionError") -> int:
    """Record when each attempt started; fail the first `fail_times` attempts with `error`."""
    _redis().rpush(f"test:times:{ctx.run_id}:{ctx.stage_id}", time.time())
    if ctx.attempt <= fail_times:
        raise _ERRORS[error](f"attempt {ctx.attempt} fails")
    return ctx.attempt


@stage("test.policy_a", retry=RetryPolicy(max_attempts=2, backoff="fixed", delay=0.05))
def policy_a(ctx) -> None:
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    raise ConnectionError("always")


@stage("test.policy_b", retry=RetryPolicy(max_attempts=4, backoff="fixed", delay=0.05))
def policy_b(ctx) -> None:
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    raise ConnectionError("always")


@stage("test.slow_counted")
def slow_counted(ctx, seconds: float = 3.0, metric: str = "done") -> str:
    """Count starts and record the host; sleep (stopping if the lease is lost); add a metric."""
    r = _redis()
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    r.rpush(f"test:hosts:{ctx.run_id}:{ctx.stage_id}", os.environ.get("CHORDFLOW_TEST_HOST", ""))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.cancelled():
        time.sleep(0.05)
    ctx.metrics.increment(metric, 1)
    return os.environ.get("CHORDFLOW_TEST_HOST", "")


@stage("test.suicide")
def suicide(ctx) -> None:
    """Kill the process running this stage, every time."""
    import signal

    _count(f"{ctx.run_id}:{ctx.stage_id}")
    os.kill(os.getpid(), signal.SIGKILL)


@stage("test.env_gated")
def env_gated(ctx, var: str = "GATE") -> str:
    """Fail unless the worker's environment says `var=open`."""
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    if os.environ.get(var) != "open":
        raise RuntimeError(f"{var} is {os.environ.get(var)!r}, not 'open'")
    return "passed"


@stage("test.versioned", version=os.environ.get("TEST_TYPE_VERSION", "1"))
def versioned(ctx, value: int = 0) -> dict:
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    return {"value": value, "version": os.environ.get("TEST_TYPE_VERSION", "1")}


# -- hooks: every event lands in a per-run list, in the order the hooks ran -------------------


def _hook(event: dict) -> None:
    _redis().rpush(
        f"test:hooks:{event['run_id']}",
        json.dumps(
            {k: event.get(k) for k in ("kind", "stage_id", "attempt", "will_retry", "status", "state")}
        ),
    )


def _raising_hook(event: dict) -> None:
    raise RuntimeError("this hook is broken on purpose")


for _kind in ("stage_start", "stage_complete", "stage_error", "run_complete"):
    hooks.register(_kind, _hook)
hooks.register("stage_complete", _raising_hook)


@stage("test.asks")
def asks(ctx, outcome: str = "retry") -> int:
    """Raise our own error types: RetryStage on the first attempt, or FailStage at once."""
    from orchestration import FailStage, RetryStage

    _count(f"{ctx.run_id}:{ctx.stage_id}")
    if outcome == "fail":
        raise FailStage("the input is corrupt; retrying will not help")
    if ctx.attempt == 1:
        raise RetryStage("the upstream service said 'later'", delay_s=0.2)
    return ctx.attempt


# -- hooks off the attempt's path (tests/integration/test_hook_outbox.py) ----------------------

# Pause and resume land in the same per-run list as the other events.
hooks.on_run_paused(_hook)
hooks.on_run_resumed(_hook)


@hooks.on_stage_start
def slow_start_hook(event: dict) -> None:
    """Sleep longer than any test lease when the stage is 'slowhook': a hook must not hold an attempt."""
    if event.get("stage_id") == "slowhook":
        _redis().incr(f"test:slowhook:{event['run_id']}")
        time.sleep(float(os.environ.get("TEST_SLOW_HOOK_S", "8")))


# -- the commit path (tests/integration/test_commit_path.py) ---------------------------------------
@stage("test.incr_context")
def incr_context(ctx, key: str = "rows", amount: float = 1) -> str:
    """Count this execution, then add to a shared context value."""
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    ctx.context.incr(key, amount)
    return "incremented"


@stage("test.bad_metric")
def bad_metric(ctx, value: str = "nan") -> str:
    """Count this execution, then add a metric that is not a finite number."""
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    ctx.metrics.increment("m", float(value))
    return "measured"


@stage("test.item_gate")
def item_gate(ctx, fail_item: int = -1, gate: str = "") -> Any:
    """Count each item's executions; item `fail_item` fails while the key test:gate:<gate> exists."""
    _count(f"{ctx.run_id}:{ctx.stage_id}:{ctx.item_index}")
    if ctx.item_index == fail_item and _redis().exists(f"test:gate:{gate}"):
        raise RuntimeError(f"item {fail_item} is gated")
    return {"item": ctx.item, "attempt": ctx.attempt}


@stage("test.stubborn")
def stubborn(ctx, seconds: float = 2.0, size: int = 0) -> Any:
    """Count this execution, sleep `seconds` ignoring cancellation, return the attempt (and padding)."""
    _count(f"{ctx.run_id}:{ctx.stage_id}")
    time.sleep(seconds)
    return {"attempt": ctx.attempt, "pad": "x" * size}


@stage("test.blob")
def blob(ctx, size: int = 1000) -> str:
    """Return `size` bytes of text (a fan-out item whose outputs add up)."""
    return "x" * size


# -- the worker policy (tests/integration/test_worker_policy.py) ----------------------------------
@stage("test.chatty")
def chatty(ctx, lines: int = 100) -> int:
    """Write `lines` lines to the run's logs through ctx.log."""
    for i in range(lines):
        ctx.log.warning(f"chatty line {i}")
    return lines


@stage("test.span")
def span(ctx, seconds: float = 0.5, tag: str = "spans", first_attempt_seconds: float | None = None) -> str:
    """Record when this attempt ran, where, and with which GPUs (capacity tests), then sleep."""
    start = time.time()
    wait = first_attempt_seconds if first_attempt_seconds is not None and ctx.attempt == 1 else seconds
    time.sleep(wait)
    _redis().rpush(
        f"test:{tag}",
        json.dumps(
            {
                "run": ctx.run_id,
                "stage": ctx.stage_id,
                "item": ctx.item_index,
                "start": start,
                "end": time.time(),
                "host": os.environ.get("CHORDFLOW_TEST_HOST", ""),
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpus": list(getattr(ctx, "gpus", [])),
            }
        ),
    )
    return "ok"
