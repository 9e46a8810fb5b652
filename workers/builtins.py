"""Built-in stage types: shell, noop, sleep, fail.

`shell` runs an argv list with no shell parsing, under the worker's policy
(docs/security.md): it can be disabled (`shell_enabled`) or limited to an
allowlist of programs (`shell_allow`); its process gets the worker's
environment without the worker's `CHORDFLOW_*` variables (they carry the Redis
password) unless `stage_env_pass` names them; it has a default timeout
(`shell_timeout_s`); its output is read as it comes and only a tail is kept
(`shell_output_tail_lines`, `shell_output_tail_bytes`) in its output, with the totals;
every line also goes to the attempt's live log as it is read (STDOUT, STDERR).
Its timeout, the attempt's cancellation, an exception in the pool process and
a SIGTERM to it (how `cancel` revokes a running task) kill its whole process
group; a timeout reports exit code 124.
`noop`, `sleep` and `fail` exist for benchmarks and for trying policies.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from orchestration.engine.registry import stage
from orchestration.errors import FailStage, ShellError, StageTimeout
from orchestration.settings import Settings

from .context import StageContext

STDERR_IN_ERROR_LINES = 5
_READ_CHUNK = 64 * 1024
_CUT_MARK = "…".encode()
_RAISABLE = {
    name: getattr(builtins, name)
    for name in (
        "ConnectionError",
        "TimeoutError",
        "ValueError",
        "RuntimeError",
        "OSError",
        "KeyError",
        "MemoryError",
    )
}


class ShellDisabled(FailStage):
    """This worker's policy turns the `shell` built-in off (`shell_enabled: false`)."""


class ProgramNotAllowed(FailStage):
    """`shell_allow` is set and the stage's program is not in it."""


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
def fail(
    ctx: StageContext,
    times: int = 1,
    error: str = "RuntimeError",
    message: str = "failing on purpose",
    output: Any = None,
    **_: Any,
) -> Any:
    """Raise `error` on the first `times` attempts (-1: always), then return `output`."""
    if times < 0 or ctx.attempt <= times:
        raise _RAISABLE.get(error, RuntimeError)(f"{message} (attempt {ctx.attempt})")
    return output


@stage("shell")
def shell(ctx: StageContext, argv: list[str] | None = None, check: bool = True, **_: Any) -> dict[str, Any]:
    """Run `run:` (an argv list, no shell) with the stage's env and cwd; output goes to the run's logs."""
    command = [str(a) for a in (ctx.run or argv or [])]
    if not command:
        raise ValueError("a shell stage needs `run: [command, arg, ...]`")
    settings = ctx.settings
    executable = check_shell_policy(settings, command, ctx.env, ctx.cwd)
    env = stage_environment(settings, ctx)
    timeout_s = (
        ctx.timeout_s
        if ctx.timeout_s is not None
        else (settings.shell_timeout_s if settings.shell_timeout_s > 0 else None)
    )
    out = OutputTail(
        settings.shell_output_tail_lines, settings.shell_output_tail_bytes, _to_log(ctx, "STDOUT")
    )
    err = OutputTail(
        settings.shell_output_tail_lines, settings.shell_output_tail_bytes, _to_log(ctx, "STDERR")
    )
    proc = subprocess.Popen(
        command,
        executable=executable,
        cwd=ctx.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=out.pump, args=(proc.stdout,), daemon=True, name="chordflow-shell-out"),
        threading.Thread(target=err.pump, args=(proc.stderr,), daemon=True, name="chordflow-shell-err"),
    ]
    for pump in pumps:
        pump.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    timed_out = cancelled = False

    def last_words() -> None:  # a SIGTERM (cancel): send the lines read so far before dying
        for pump in pumps:
            pump.join(timeout=0.3)
        ctx.log_sink.flush_soon(timeout_s=1.0)

    with _group_dies_with_this_process(proc.pid, last_words):
        try:
            while True:
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    if ctx.cancelled():
                        cancelled = True
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        timed_out = True
                        break
        finally:
            # Whatever ends the wait (exit, timeout, cancel, a soft time limit raised in here),
            # nothing the attempt started outlives it: the command's whole group is killed.
            _kill_group(proc.pid)
            proc.wait()
            for pump in pumps:
                pump.join(timeout=5)
    out_lines, err_lines = out.lines(), err.lines()
    if timed_out:
        where = (
            "its timeout"
            if ctx.timeout_s is not None
            else "the worker's default shell timeout (shell_timeout_s)"
        )
        raise StageTimeout(f"{command[0]} ran past {where} of {timeout_s:g}s and was killed (exit code 124)")
    if cancelled:
        raise StageTimeout(
            f"{command[0]} was stopped: the run was cancelled or this attempt lost its lease", returncode=None
        )
    if check and proc.returncode != 0:
        raise ShellError(command, proc.returncode, "\n".join(err_lines[-STDERR_IN_ERROR_LINES:]))
    return {
        "exit_code": proc.returncode,
        "stdout": "\n".join(out_lines),
        "stderr": "\n".join(err_lines),
        "stdout_lines_total": out.lines_total,
        "stderr_lines_total": err.lines_total,
        "stdout_bytes_total": out.bytes_total,
        "stderr_bytes_total": err.bytes_total,
    }


# -- the worker's policy -------------------------------------------------------------------------


def check_shell_policy(
    settings: Settings, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None
) -> str | None:
    """Refuse what the worker's policy forbids; returns the executable to start (None: look argv[0] up).

    With an allowlist, argv[0] is resolved here, on the worker's own PATH (never the stage's
    `env: {PATH: ...}`), and that file is what runs: a name in the list cannot be shadowed."""
    program = command[0]
    if not settings.shell_enabled:
        raise ShellDisabled(
            f"this worker has the `shell` built-in disabled, so it does not run {program!r}: run the stage on a "
            f"worker started with CHORDFLOW_SHELL_ENABLED=true (and CHORDFLOW_SHELL_ALLOW to limit its "
            f"programs), or use a registered stage type (docs/security.md)"
        )
    if not settings.shell_allow:
        return None
    allowed = ", ".join(settings.shell_allow)
    for name in env or {}:
        if name.startswith(("LD_", "DYLD_")):
            raise ProgramNotAllowed(
                f"env: {name} is refused on a worker that limits `shell` to its programs (shell_allow): "
                f"it would change the code those programs run"
            )
    resolved = _resolve(program, cwd)
    for entry in settings.shell_allow:
        if "/" in entry:
            target: str | None = os.path.normpath(entry) if os.path.isabs(entry) else None
        else:
            target = shutil.which(entry)
            if "/" not in program and program == entry and target is not None:
                return target
        if target is not None and resolved is not None and os.path.normpath(target) == resolved:
            return resolved
    raise ProgramNotAllowed(
        f"{program!r} is not a program this worker's `shell` may run: it allows only {allowed} "
        f"(shell_allow, set by CHORDFLOW_SHELL_ALLOW)"
    )


def _resolve(program: str, cwd: str | None) -> str | None:
    if "/" in program:
        return os.path.normpath(os.path.join(cwd or os.getcwd(), program))
    found = shutil.which(program)
    return os.path.normpath(found) if found else None


def stage_environment(settings: Settings, ctx: StageContext) -> dict[str, str]:
    """The environment of a stage's process: the worker's, without its CHORDFLOW_* variables (but for
    `stage_env_pass`), plus the stage's `env:` and the attempt's CHORDFLOW_RUN_ID/STAGE_ID/ATTEMPT/ITEM."""
    passed = set(settings.stage_env_pass)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_") or k in passed}
    env.update({str(k): str(v) for k, v in ctx.env.items()})
    env.update(
        CHORDFLOW_RUN_ID=ctx.run_id, CHORDFLOW_STAGE_ID=ctx.stage_id, CHORDFLOW_ATTEMPT=str(ctx.attempt)
    )
    if ctx.item_index is not None:
        env["CHORDFLOW_ITEM"] = json.dumps(ctx.item)
    return env


def _to_log(ctx: StageContext, level: str) -> Callable[[list[bytes]], None]:
    """Send a chunk's complete lines to the attempt's log as they come (at most its cap per chunk:
    the stream would keep no more; the rest are counted)."""
    sink = ctx.log_sink

    def send(lines: list[bytes]) -> None:
        if len(lines) > sink.cap:
            sink.skip(len(lines) - sink.cap)
            lines = lines[-sink.cap :]
        sink.add_many(
            (
                (line[:-1] if line.endswith(b"\r") else line).decode("utf-8", errors="replace")
                for line in lines
            ),
            level,
        )

    return send


class OutputTail:
    """The last `max_lines` lines (and at most `max_bytes` bytes) of a stream, read as it comes; totals counted.

    Memory stays bounded whatever the command writes: a line longer than `max_bytes`, even
    one that never ends, keeps only its last `max_bytes` bytes. `sink`, if given, gets every
    complete line (cut the same way) as it is read: the live log."""

    def __init__(self, max_lines: int, max_bytes: int, sink: Callable[[list[bytes]], None] | None = None):
        self.max_lines, self.max_bytes = max(0, max_lines), max(0, max_bytes)
        self.sink = sink
        self._kept: deque[bytes] = deque()
        self._kept_bytes = 0
        self._partial = b""
        self._partial_cut = False
        self.lines_total = 0
        self.bytes_total = 0

    def pump(self, stream: IO[bytes]) -> None:
        try:
            fd = stream.fileno()
            while True:
                chunk = os.read(fd, _READ_CHUNK)
                if not chunk:
                    break
                self.feed(chunk)
        except (OSError, ValueError):
            pass
        finally:
            self.close()
            try:
                stream.close()
            except OSError:
                pass

    def feed(self, chunk: bytes) -> None:
        self.bytes_total += len(chunk)
        *complete, rest = chunk.split(b"\n")
        if complete:
            first = self._cut(self._partial + complete[0], self._partial_cut)
            complete[0] = first
            self._partial, self._partial_cut = b"", False
            self.lines_total += len(complete)
            if self.sink is not None:
                self.sink([self._cut(line, False) for line in complete])
            for line in complete[-self.max_lines :] if self.max_lines else ():
                self._keep(line)
        self._partial += rest
        if len(self._partial) > self.max_bytes:
            self._partial, self._partial_cut = (
                self._partial[-self.max_bytes :] if self.max_bytes else b"",
                True,
            )

    def close(self) -> None:
        if self._partial or self._partial_cut:
            self.lines_total += 1
            last = self._cut(self._partial, self._partial_cut)
            if self.max_lines:
                self._keep(last)
            if self.sink is not None:
                self.sink([last])
            self._partial, self._partial_cut = b"", False

    def _cut(self, line: bytes, cut: bool) -> bytes:
        """The line, or its end marked "…" when it was longer than `max_bytes` (marker included)."""
        if not cut and len(line) <= self.max_bytes:
            return line
        room = self.max_bytes - len(_CUT_MARK)
        return _CUT_MARK + line[-room:] if room > 0 else b""

    def _keep(self, line: bytes) -> None:
        line = line[:-1] if line.endswith(b"\r") else line
        self._kept.append(line)
        self._kept_bytes += len(line) + 1
        while self._kept and (len(self._kept) > self.max_lines or self._kept_bytes > self.max_bytes + 1):
            self._kept_bytes -= len(self._kept.popleft()) + 1

    @property
    def lines_dropped(self) -> int:
        return self.lines_total - len(self._kept)

    def lines(self) -> list[str]:
        return [line.decode("utf-8", errors="replace") for line in self._kept]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def _group_dies_with_this_process(pgid: int, last_words: Callable[[], None] | None = None) -> Iterator[None]:
    """While the command runs, a SIGTERM to this process kills the command's group first (then
    `last_words`: the attempt's log lines read so far are sent).

    `cancel` revokes a running task with SIGTERM, which a prefork pool process takes with the
    default action (it dies at once, running no `finally`); the command runs in its own session,
    so without this it would outlive the attempt. The handler kills the group, then lets the
    signal do what it did before. Signal handlers exist only in the main thread: elsewhere
    (a threads pool) the attempt's cancellation still stops the command."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        _kill_group(pgid)
        if last_words is not None:
            last_words()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
