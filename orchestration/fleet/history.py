"""What earlier runs of a pipeline took: per-stage median durations for `plan`'s makespan estimate.

A stage's duration is its recorded `finished_at - started_at` (epoch s, Redis's
clock) in the stage hash: the last attempt of a plain stage, the whole of a
fan-out. Only stages that succeeded, in runs that succeeded, count.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from orchestration.states import RunStatus, State

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore
    from orchestration.settings import Settings

SCAN_FACTOR = 10  # look through up to limit × this many newest runs to find `limit` that succeeded


def stage_seconds(record: Mapping[str, str]) -> float | None:
    """The duration in one stage hash, or None when it has no sound start and finish."""
    try:
        started, finished = float(record["started_at"]), float(record["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    duration = finished - started
    return duration if math.isfinite(duration) and duration >= 0 else None


def median_durations(records: Iterable[tuple[str, Mapping[str, str]]]) -> dict[str, float]:
    """Stage id -> median seconds over the (stage id, stage hash) records that have a duration."""
    samples: dict[str, list[float]] = defaultdict(list)
    for stage_id, record in records:
        seconds = stage_seconds(record)
        if seconds is not None:
            samples[stage_id].append(seconds)
    return {stage_id: statistics.median(values) for stage_id, values in samples.items()}


def succeeded_runs(store: RunStore, pipeline: str, limit: int = 20) -> list[str]:
    """The ids of the newest `limit` succeeded runs of `pipeline`, newest first."""
    ids = [str(i) for i in store.runs.recent_runs(limit * SCAN_FACTOR, pipeline)]
    statuses = store.runs.run_fields(ids, ["status"])
    return [run_id for run_id, (status,) in zip(ids, statuses) if status == RunStatus.SUCCEEDED][:limit]


def stage_durations(store: RunStore, pipeline: str, limit: int = 20) -> dict[str, float]:
    """Stage id -> median seconds over the newest `limit` succeeded runs of `pipeline`."""
    records: list[tuple[str, Mapping[str, str]]] = []
    for run_id in succeeded_runs(store, pipeline, limit):
        done = [sid for sid, state in store.runs.states(run_id).items() if state == State.SUCCEEDED]
        records += store.runs.stage_details(run_id, done).items()
    return median_durations(records)


def run_seconds(store: RunStore, pipeline: str, limit: int = 20) -> float | None:
    """The median time from submit to end of the newest `limit` succeeded runs of `pipeline`
    (what the stages' durations leave out: dispatch, commits, waits), or None without one."""
    ids = succeeded_runs(store, pipeline, limit)
    spans = [
        stage_seconds({"started_at": c or "", "finished_at": f or ""})
        for c, f in store.runs.run_fields(ids, ["created_at", "finished_at"])
    ]
    found = [span for span in spans if span is not None]
    return statistics.median(found) if found else None


def estimates(settings: Settings, pipeline: str, limit: int = 20, timeout_s: float = 2.0) -> dict[str, float]:
    """`stage_durations` from the configured Redis, or {} when none is configured or it is unreachable
    (a plan is still useful without history)."""
    if not settings.redis_url:
        return {}
    import redis  # here: `plan` without a Redis never loads the client

    from orchestration.engine.store import RunStore
    from orchestration.fleet.health import quick_client

    client = quick_client(settings, timeout_s)
    try:
        return stage_durations(RunStore(client, settings), pipeline, limit)
    except redis.RedisError:
        return {}
    finally:
        client.close()
