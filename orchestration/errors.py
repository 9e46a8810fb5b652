"""Every error Chordflow raises on purpose, in one tree, with the command line's exit code:
2 for invalid input (nothing was done), 3 when a wait for a run timed out (the run goes on),
4 when a pipeline's dependencies are not met (it was not started), 1 for every other error,
as for a run that failed (0 is success). A stage's errors end an attempt, not a command: the
worker records them.

ChordflowError                 1  the root; raised as such for what has no class of its own
├── InvalidInput               2  what the user gave is wrong; nothing was done
│   ├── InvalidPipeline        2  the pipeline (file, builder, --set) is wrong: every problem
│   │   └── SelectionError     2  a --select expression is wrong or selects nothing
│   ├── NoCapacity             2  a stage asks for more GPUs or memory than any live worker of its
│   │                             queue has (engine/placement.py; `submit --no-check` queues it)
│   ├── InvalidId              2  a run id, stage id or idempotency key of the wrong shape
│   ├── StageNotFound          2  a stage id the run does not have (`logs RUN STAGE`)
│   ├── ScheduleError          2  a schedule's cron expression, interval or name is wrong
│   └── InvalidRedisUrl        2  CHORDFLOW_REDIS_URL is not a Redis URL (engine/redis_url.py)
├── DependenciesNotMet         4  a pipeline's depends_on/requires are not met: not started
                                  (engine/dependencies.py; `submit --force` runs it anyway)
├── RedisUnreachable           1  a command could not reach its Redis (engine/redis_url.py)
├── WebhookRefused             1  a webhook URL or redirect that is not http(s): never opened
                                  (engine/hooks.py; logged by the hook sender, not retried)
├── NotReplicated              1  fewer replicas than CHORDFLOW_REPLICAS_ACK confirmed a write
                                  (engine/durability.py): not acknowledged
├── RunNotFound                1  no run with that id in the store (wrong id, or expired)
├── RunTimeout                 3  a run did not finish within the time waited for it (it goes on)
├── LocalFleetError            1  the private Redis or worker of a local run did not start
└── StageError                    how an attempt of a stage ended, recorded as its error
    ├── RetryStage                the stage asks for another attempt
    ├── FailStage                 the stage fails for good, no retry
    │   ├── CommitRefused         the commit's checks refused what the attempt wrote
    │   ├── ShellDisabled         the worker's policy turns `shell` off (workers/builtins.py)
    │   ├── ProgramNotAllowed     the program is not in `shell_allow` (workers/builtins.py)
    │   └── ContextValueTooLarge  a shared context value over its cap (workers/context.py)
    ├── OutputTooLarge            the output is over the output cap (never retried)
    ├── StageTimeout              the stage ran past its timeout
    ├── ShellError                a `shell` stage's command exited non-zero
    └── RedisRefusedWrite         Redis refused the attempt's commit (out of memory, read-only)

Some also derive from the built-in error callers may already catch (InvalidId and
InvalidRedisUrl and WebhookRefused: ValueError; RunTimeout: TimeoutError; LocalFleetError and ShellError:
RuntimeError), and a retry policy's `retry_on` may name either.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass


def listing(names: Sequence[str], shown: int = 10) -> str:
    """`a, b, c, ... (97 more)`: names in a message, the first `shown` of them; a 10,000-stage
    pipeline's message must not be 10,000 ids long."""
    more = len(names) - shown
    return f"{', '.join(names[:shown])}, ... ({more} more)" if more > 0 else ", ".join(names)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline, with where it is."""

    message: str
    stage_id: str | None = None
    line: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        elif self.line:
            where = f"line {self.line}: "
        stage = f"stage '{self.stage_id}': " if self.stage_id else ""
        return f"{where}{stage}{self.message}"


class ChordflowError(Exception):
    """Base of every error Chordflow raises on purpose; `exit_code` is the command line's."""

    exit_code = 1


# -- invalid input (exit 2) ------------------------------------------------------------------


class InvalidInput(ChordflowError):
    """What the user gave is wrong, and nothing was done (exit code 2)."""

    exit_code = 2


class InvalidPipeline(InvalidInput):
    """The pipeline is wrong; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(problems, source=source)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        count = len(problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the pipeline"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


class SelectionError(InvalidPipeline):
    """A --select expression is malformed or selects nothing."""


class NoCapacity(InvalidInput):
    """Stages (`stage_ids`) ask for more than any live worker serving their queue has: one line each."""

    def __init__(self, stage_ids: list[str], lines: list[str]):
        self.stage_ids, self.lines = stage_ids, lines
        if len(lines) == 1:
            super().__init__(f"{lines[0]} (submit with --no-check to queue it anyway)")
        else:
            super().__init__(
                f"{len(lines)} stages ask for more than any live worker serving their queue has "
                "(submit with --no-check to queue them anyway):\n" + "\n".join(f"  {line}" for line in lines)
            )


class InvalidId(InvalidInput, ValueError):
    """A run id, stage id or idempotency key that is not of the allowed shape."""


class StageNotFound(InvalidInput):
    """Run `run_id` has no stage `stage_id`; the message names the close ones and its stages."""

    def __init__(self, run_id: str, stage_id: str, stage_ids: list[str]):
        self.run_id, self.stage_id = run_id, stage_id
        close = difflib.get_close_matches(stage_id, stage_ids, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = ", ".join(stage_ids[:20]) + (f", … {len(stage_ids) - 20} more" if len(stage_ids) > 20 else "")
        super().__init__(f"run {run_id} has no stage '{stage_id}'{hint}; its stages: {shown}")


class ScheduleError(InvalidInput):
    """A schedule's cron expression, interval or name is wrong."""


# -- runs and the fleet (exit 1) ----------------------------------------------------------------


class NotReplicated(ChordflowError):
    """Fewer replicas than CHORDFLOW_REPLICAS_ACK confirmed `what` in time: not acknowledged."""

    def __init__(self, what: str, replicas: int, wanted: int, waited_ms: int):
        self.what, self.replicas, self.wanted = what, replicas, wanted
        super().__init__(
            f"{what}: {replicas} of {wanted} replicas confirmed it within {waited_ms} ms "
            "(CHORDFLOW_REPLICAS_ACK); it is not acknowledged. `chordflow health` shows the replicas' lag"
        )


class RunNotFound(ChordflowError):
    """No run with this id exists (or it has expired)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"no run '{run_id}' in the store (wrong id, or its TTL expired)")


class RunTimeout(ChordflowError, TimeoutError):
    """Run `run_id` did not finish within the time waited for it (it goes on): exit code 3."""

    exit_code = 3

    def __init__(self, run_id: str, timeout_s: float | None, status: str):
        self.run_id, self.status = run_id, status
        super().__init__(
            f"run {run_id} did not finish within {timeout_s}s (it is {status or 'still running'}; it goes on: "
            f"`chordflow watch {run_id}` follows it)"
        )


class LocalFleetError(ChordflowError, RuntimeError):
    """The private Redis or worker of a local run (`chordflow submit FILE` with no Redis) did not start."""


class DependenciesNotMet(ChordflowError):
    """Pipeline `pipeline` was not started: its `unmet` depends_on/requires, one line each (exit code 4)."""

    exit_code = 4

    def __init__(self, pipeline: str, unmet: list[str]):
        self.pipeline, self.unmet = pipeline, unmet
        lines = "\n".join(f"  {line}" for line in unmet)
        super().__init__(
            f"dependencies of '{pipeline}' are not met, so it was not started "
            f"(--force runs it anyway, --wait-for-deps waits for them):\n{lines}"
        )


# -- how an attempt of a stage ended (recorded as the stage's error) -------------------------------


class StageError(ChordflowError):
    """An attempt of a stage ended with this; the worker records it as the stage's error."""


class OutputTooLarge(StageError):
    """A stage output exceeds the configured cap."""

    def __init__(self, run_id: str, stage_id: str, size: int, cap: int):
        self.run_id, self.stage_id, self.size, self.cap = run_id, stage_id, size, cap
        super().__init__(
            f"stage '{stage_id}' returned {size:,} bytes of JSON, over the output cap of "
            f"{cap:,} bytes. Write large data to a file or object store and return a "
            f'reference to it instead (e.g. {{"path": "s3://bucket/key"}}), or raise '
            f"CHORDFLOW_OUTPUT_CAP_BYTES."
        )


class RetryStage(StageError):
    """Raised by a stage to ask for another attempt, whatever its policy's retry_on says."""

    def __init__(self, message: str = "the stage asked to be retried", delay_s: float | None = None):
        self.delay_s = delay_s
        super().__init__(message)


class FailStage(StageError):
    """Raised by a stage to fail for good, with no further attempt."""


class CommitRefused(FailStage):
    """The commit script's checks refused the attempt's writes (a context value that is not a
    number, a metric that is not finite); nothing of the attempt was written."""


class StageTimeout(StageError):
    """A stage ran past its timeout (a shell stage reports exit code 124)."""

    def __init__(self, message: str, returncode: int | None = 124):
        self.returncode = returncode  # the killed command's, as `timeout(1)` reports it
        super().__init__(message)


class ShellError(StageError, RuntimeError):
    """A `shell` stage's command exited non-zero; `returncode` is its exit code."""

    def __init__(self, argv: list[str], exit_code: int, stderr_tail: str):
        self.returncode = exit_code
        super().__init__(
            f"{argv[0]} exited with code {exit_code}" + (f": {stderr_tail}" if stderr_tail else "")
        )


class RedisRefusedWrite(StageError):
    """Redis refused an attempt's writes: it is at `maxmemory` (OOM) or a read-only replica."""

    def __init__(self, reason: str):
        lowered = reason.lower()
        if "maxmemory" in lowered or "oom" in lowered or "memory" in lowered:
            what = (
                "Redis is out of memory (used memory is over its maxmemory) and refused the "
                "stage's commit; free memory or raise maxmemory, then `chordflow retry RUN`"
            )
        else:
            what = "Redis refused the stage's commit (it is read-only: a replica, or a failover under way)"
        super().__init__(f"{what}: {reason}")
