"""Errors raised by the coordinator side.

ChordflowError
├── InvalidPipeline        the pipeline file or builder input is wrong (exit 2)
│   └── SelectionError     a --select expression is wrong or matches nothing
├── InvalidId              a run id, stage id or idempotency key of the wrong shape (exit 2)
├── RunNotFound            no run with that id in the store
├── StoreError             Redis refused or lost a write the run depends on
│   └── RedisRefusedWrite  Redis is out of memory or read-only: an attempt's commit was refused
├── OutputTooLarge         a stage returned more than the output cap
├── RetryStage             a stage asks for another attempt
├── FailStage              a stage fails for good, no retry
│   └── CommitRefused      the commit's checks refused what the attempt wrote (nothing was written)
└── StageTimeout           a stage ran past its timeout
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """Base of every error Chordflow raises on purpose."""

    exit_code = 1


class InvalidPipeline(ChordflowError):
    """The pipeline is wrong; carries every problem found, not just the first."""

    exit_code = 2

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


class InvalidId(ChordflowError, ValueError):
    """A run id, stage id or idempotency key that is not of the allowed shape (exit code 2)."""

    exit_code = 2


class RunNotFound(ChordflowError):
    """No run with this id exists (or it has expired)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"no run '{run_id}' in the store (wrong id, or its TTL expired)")


class StoreError(ChordflowError):
    """Redis refused or lost a write the run depends on."""


class RedisRefusedWrite(StoreError):
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


class OutputTooLarge(ChordflowError):
    """A stage output exceeds the configured cap."""

    def __init__(self, run_id: str, stage_id: str, size: int, cap: int):
        self.run_id, self.stage_id, self.size, self.cap = run_id, stage_id, size, cap
        super().__init__(
            f"stage '{stage_id}' returned {size:,} bytes of JSON, over the output cap of "
            f"{cap:,} bytes. Write large data to a file or object store and return a "
            f'reference to it instead (e.g. {{"path": "s3://bucket/key"}}), or raise '
            f"CHORDFLOW_OUTPUT_CAP_BYTES."
        )


class RetryStage(ChordflowError):
    """Raised by a stage to ask for another attempt, whatever its policy's retry_on says."""

    def __init__(self, message: str = "the stage asked to be retried", delay_s: float | None = None):
        self.delay_s = delay_s
        super().__init__(message)


class FailStage(ChordflowError):
    """Raised by a stage to fail for good, with no further attempt."""


class CommitRefused(FailStage):
    """The commit script's checks refused the attempt's writes (a context value that is not a
    number, a metric that is not finite); nothing of the attempt was written."""


class StageTimeout(ChordflowError):
    """A stage ran past its timeout (a shell stage reports exit code 124)."""

    def __init__(self, message: str, returncode: int | None = 124):
        self.returncode = returncode  # the killed command's, as `timeout(1)` reports it
        super().__init__(message)
