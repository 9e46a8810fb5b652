"""The worker's policy for built-ins, in-process: shell on/off and its allowlist, the stage
environment, the shell output tail, the log-line cap and the context value cap."""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import pytest

from orchestration.errors import FailStage, StageTimeout
from orchestration.settings import Settings
from workers.builtins import (
    OutputTail,
    ProgramNotAllowed,
    ShellDisabled,
    check_shell_policy,
    shell,
    stage_environment,
)
from workers.context import ContextValueTooLarge, StageContext


class _Runs:
    """Just enough of a RunStore's `runs` for a StageContext that reads no shared context."""

    def context_get(self, run_id: str, key: str) -> Any:
        return None


class _Store:
    """Just enough of a RunStore for a StageContext: its settings and `runs`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runs = _Runs()


def _ctx(settings: Settings | None = None, run: list[str] | None = None, **kw: Any) -> StageContext:
    return StageContext(
        _Store(settings or Settings()), "r1", "s1", 1, {}, {}, run=tuple(run) if run else None, **kw
    )


def test_disabled_shell_fails_the_stage_and_says_how_to_enable_it():
    with pytest.raises(ShellDisabled) as caught:
        shell(_ctx(Settings(shell_enabled=False), run=["echo", "hi"]))
    assert isinstance(caught.value, FailStage)  # never retried
    assert "CHORDFLOW_SHELL_ENABLED" in str(caught.value) and "'echo'" in str(caught.value)


def test_allowlist_by_name_and_by_absolute_path():
    echo = shutil.which("echo")
    assert echo
    by_name = Settings(shell_allow=("echo",))
    assert check_shell_policy(by_name, ["echo", "x"]) == echo
    assert check_shell_policy(by_name, [echo, "x"]) == os.path.normpath(echo)
    by_path = Settings(shell_allow=(echo,))
    assert check_shell_policy(by_path, ["echo"]) == os.path.normpath(echo)
    with pytest.raises(ProgramNotAllowed) as caught:
        check_shell_policy(by_name, ["printenv"])
    assert "'printenv'" in str(caught.value) and "shell_allow" in str(caught.value)
    assert check_shell_policy(Settings(), ["anything"]) is None  # no allowlist: PATH lookup as usual


def test_an_allowed_name_cannot_be_shadowed_by_the_stage(tmp_path):
    fake = tmp_path / "echo"
    fake.write_text("#!/bin/sh\necho shadowed\n")
    fake.chmod(0o755)
    settings = Settings(shell_allow=("echo",))
    with pytest.raises(ProgramNotAllowed):
        check_shell_policy(settings, [str(fake)])
    with pytest.raises(ProgramNotAllowed):
        check_shell_policy(settings, ["./echo"], cwd=str(tmp_path))
    with pytest.raises(ProgramNotAllowed, match="LD_PRELOAD"):
        check_shell_policy(settings, ["echo"], env={"LD_PRELOAD": "/tmp/x.so"})
    # env: {PATH: ...} does not change which file runs: the worker's PATH resolved it
    result = shell(_ctx(settings, run=["echo", "real"], env={"PATH": str(tmp_path)}))
    assert result["stdout"] == "real"


def test_stage_environment_withholds_chordflow_variables(monkeypatch):
    monkeypatch.setenv("CHORDFLOW_REDIS_URL", "redis://:secret@h:1/0")
    monkeypatch.setenv("CHORDFLOW_TEAM", "blue")
    monkeypatch.setenv("HOME_LIKE", "kept")
    ctx = _ctx(env={"MINE": "1"})
    env = stage_environment(Settings(), ctx)
    assert "CHORDFLOW_REDIS_URL" not in env and "CHORDFLOW_TEAM" not in env
    assert env["HOME_LIKE"] == "kept" and env["MINE"] == "1"
    assert (
        env["CHORDFLOW_RUN_ID"] == "r1"
        and env["CHORDFLOW_STAGE_ID"] == "s1"
        and env["CHORDFLOW_ATTEMPT"] == "1"
    )
    passed = stage_environment(Settings(stage_env_pass=("CHORDFLOW_TEAM",)), ctx)
    assert passed["CHORDFLOW_TEAM"] == "blue" and "CHORDFLOW_REDIS_URL" not in passed


def test_output_tail_keeps_the_last_lines_within_the_byte_cap():
    tail = OutputTail(3, 1000)
    for i in range(10):
        tail.feed(f"line {i}\n".encode())
    tail.close()
    assert tail.lines() == ["line 7", "line 8", "line 9"]
    assert tail.lines_total == 10 and tail.lines_dropped == 7
    small = OutputTail(100, 10)  # the kept text, joined by newlines, is at most 10 bytes
    small.feed(b"aaaa\nbbbb\ncccc\n")
    small.close()
    assert small.lines() == ["bbbb", "cccc"] and small.lines_total == 3
    endless = OutputTail(5, 11)
    for _ in range(1000):
        endless.feed(b"x" * 1000)  # one line that never ends stays within the cap
    assert len(endless._partial) <= 11
    endless.close()
    assert endless.lines() == ["…xxxxxxxx"] and endless.lines_total == 1 and endless.bytes_total == 1_000_000


def test_shell_output_is_a_capped_tail_with_totals_and_every_line_goes_to_the_log():
    settings = Settings(shell_output_tail_lines=5, shell_output_tail_bytes=1000, log_lines_cap=50)
    ctx = _ctx(settings, run=[sys.executable, "-c", "for i in range(100000): print(i)"])
    result = shell(ctx)
    assert result["stdout"].splitlines() == [str(i) for i in range(99995, 100000)]
    assert result["stdout_lines_total"] == 100000
    # every line went to the attempt's log as it was read; the log keeps its last log_lines_cap
    assert ctx.log_lines == [str(i) for i in range(99950, 100000)]
    assert ctx.log_sink.total == 100000 and ctx.log_sink.dropped == 99950


def test_shell_default_timeout_comes_from_the_settings():
    ctx = _ctx(Settings(shell_timeout_s=0.3), run=["sleep", "30"])
    with pytest.raises(StageTimeout, match="shell_timeout_s"):
        shell(ctx)


def test_log_lines_are_capped_keeping_the_last_and_counting_the_rest():
    ctx = _ctx(Settings(log_lines_cap=3))
    for i in range(10):
        ctx.log.warning("line %s", i)
    assert ctx.log_lines == ["line 7", "line 8", "line 9"]
    assert ctx.log_sink.total == 10 and ctx.log_sink.dropped == 7


def test_a_context_value_over_the_cap_fails_with_its_key_size_and_cap():
    ctx = _ctx(Settings(context_value_cap_bytes=100))
    ctx.context.set("small", "x" * 50)
    with pytest.raises(ContextValueTooLarge) as caught:
        ctx.context.set("big", "x" * 200)
    message = str(caught.value)
    assert "'big'" in message and "202 bytes" in message and "100 bytes" in message and "reference" in message
    assert isinstance(caught.value, FailStage)
    assert [w[1] for w in ctx.context.writes] == ["small"]
