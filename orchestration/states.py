"""The names of stage and run states: the one place they are spelled.

The Lua scripts get the same names from a prelude generated from these enums
(`lua_prelude()`), so Python and Lua cannot disagree on a state's spelling.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A stage's (or a fan-out item's) state."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    UPSTREAM_FAILED = "upstream_failed"
    FALLBACK = "fallback"


class RunStatus(StrEnum):
    """A run's status."""

    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # never started: its dependencies on other pipelines were not met


TERMINAL = frozenset(
    {State.SUCCEEDED, State.FAILED, State.SKIPPED, State.CANCELLED, State.UPSTREAM_FAILED, State.FALLBACK}
)
#: States whose output a retried run keeps (the stage or item is not run again).
KEPT_ON_RETRY = frozenset({State.SUCCEEDED, State.SKIPPED, State.FALLBACK})
RUN_FINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED})
RUN_ACTIVE = frozenset({RunStatus.RUNNING, RunStatus.PAUSED})


def _lua_set(name: str, members: frozenset[str]) -> str:
    return f"local {name} = {{" + ", ".join(f"{m} = true" for m in sorted(members)) + "}"


def lua_prelude() -> str:
    """Lua source defining S (stage states), R (run statuses) and the state sets, for every script."""
    return (
        "\n".join(
            [
                "local S = {" + ", ".join(f"{s.name} = '{s.value}'" for s in State) + "}",
                "local R = {" + ", ".join(f"{s.name} = '{s.value}'" for s in RunStatus) + "}",
                _lua_set("TERMINAL", TERMINAL),
                _lua_set("KEPT_ON_RETRY", KEPT_ON_RETRY),
                _lua_set("RUN_ACTIVE", RUN_ACTIVE),
            ]
        )
        + "\n"
    )
