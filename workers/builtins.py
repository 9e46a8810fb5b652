"""Built-in stage types: shell, noop, sleep, fail.

`shell` runs an argv list with no shell parsing; its output lines go to the
run's logs and its timeout kills the process group and reports exit code 124.
`noop`, `sleep` and `fail` exist for benchmarks and for trying policies.
"""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import time
from typing import Any

from orchestration.errors import StageTimeout
from orchestration.registry import stage

from .context import StageContext

OUTPUT_TAIL_LINES = 50
_RAISABLE = {name: getattr(builtins, name) for name in (
    "ConnectionError", "TimeoutError", "ValueError", "RuntimeError", "OSError", "KeyError", "MemoryError",
)}


class ShellError(RuntimeError):
    """A shell stage's command exited non-zero."""

    def __init__(self, argv: list[str], exit_code: int, stderr_tail: str):
        self.returncode = exit_code
        super().__init__(f"{argv[0]} exited with code {exit_code}" + (f": {stderr_tail}" if stderr_tail else ""))


@stage("noop")
def noop(ctx: StageContext, output: Any = None, **_: Any) -> Any:
    """Do nothing; return `output` if given, else the fan-out item."""
    return output if output is not None else ctx.item


@stage("sleep")
def sleep(ctx: StageContext, seconds: float = 0.5, output: Any = None, **_: Any) -> Any:
    """Sleep `seconds` (stopping early if cancelled); return `output` or the item."""
    deadline = time.monotonic() + float(seconds)
    while not ctx.cancelled():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.05))
    return output if output is not None else ctx.item


@stage("fail")
def fail(ctx: StageContext, times: int = 1, error: str = "RuntimeError", message: str = "failing on purpose",
         output: Any = None, **_: Any) -> Any:
    """Raise `error` on the first `times` attempts (-1: always), then return `output`."""
    if times < 0 or ctx.attempt <= times:
        raise _RAISABLE.get(error, RuntimeError)(f"{message} (attempt {ctx.attempt})")
    return output


@stage("shell")
def shell(ctx: StageContext, argv: list[str] | None = None, check: bool = True, **_: Any) -> dict[str, Any]:
    """Run `run:` (an argv list, no shell) with the stage's env and cwd; output goes to the run's logs."""
    command = list(ctx.run or argv or [])
    if not command:
        raise ValueError("a shell stage needs `run: [command, arg, ...]`")
    env = {**os.environ, **ctx.env, "CHORDFLOW_RUN_ID": ctx.run_id, "CHORDFLOW_STAGE_ID": ctx.stage_id,
           "CHORDFLOW_ATTEMPT": str(ctx.attempt)}
    if ctx.item_index is not None:
        env["CHORDFLOW_ITEM"] = json.dumps(ctx.item)
    proc = subprocess.Popen(command, cwd=ctx.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = None if ctx.timeout_s is None else time.monotonic() + ctx.timeout_s
    timed_out = False
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if ctx.cancelled() or (deadline is not None and time.monotonic() >= deadline):
                timed_out = not ctx.cancelled()
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                break
    out_lines, err_lines = stdout.splitlines(), stderr.splitlines()
    ctx.log_lines.extend(out_lines)
    ctx.log_lines.extend(f"[stderr] {line}" for line in err_lines)
    if timed_out:
        raise StageTimeout(f"{command[0]} ran past its timeout of {ctx.timeout_s:g}s and was killed (exit code 124)")
    if check and proc.returncode != 0:
        raise ShellError(command, proc.returncode, "\n".join(err_lines[-5:]))
    return {"exit_code": proc.returncode, "stdout": "\n".join(out_lines[-OUTPUT_TAIL_LINES:]),
            "stderr": "\n".join(err_lines[-OUTPUT_TAIL_LINES:])}
