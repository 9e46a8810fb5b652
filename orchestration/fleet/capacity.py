"""Stages waiting for capacity, per queue: what `chordflow health` reports and autoscalers read.

A stage that asks for GPUs or memory and found no worker with room when it began waits in Redis
(its queue's capacity class, engine/keys.py `capacity_waiting`) until a worker frees room or
joins. Per queue, health reports how many wait (`waiting`), how many no live worker could ever
hold (`unplaceable`: they ask for more than the largest live worker serving the queue has, or no
live worker serves it), how long the oldest has waited (`oldest_s`) and a few examples.

`health --json` carries it as `capacity.<queue>.waiting` / `.unplaceable`: the signal to scale a
gpu or highmem worker deployment on (docs/deploy.md). A stage that waits but fits is healthy (it
starts when room frees); an unplaceable one is a problem, as work on a queue no worker serves is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from orchestration.engine.capacity_reads import Waiter, capacity_waiting
from orchestration.engine.placement import Ask, Room, rooms, shortfall

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore

if TYPE_CHECKING:
    from orchestration.fleet.health import HealthReport

EXAMPLES = 5  # waiting stages named per queue


@dataclass
class CapacityReport:
    """One queue's stages waiting for capacity."""

    waiting: int = 0
    unplaceable: int = 0
    oldest_s: float | None = None  # how long the oldest has waited (Redis's clock)
    examples: list[str] = field(default_factory=list)  # 'run/stage asks 4 GPU', unplaceable first
    served: bool = True  # some live worker serves the queue


def example(waiter: Waiter, unplaceable: bool) -> str:
    """`r1/train asks 4 GPU`, `r1/embed[3] asks 1 GPU, 24 GB (unplaceable)`."""
    asks = [f"{waiter.gpu} GPU"] if waiter.gpu else []
    if waiter.memory_gb:
        asks.append(f"{waiter.memory_gb:g} GB")
    return f"{waiter.where} asks {', '.join(asks) or 'nothing'}" + (" (unplaceable)" if unplaceable else "")


def queue_capacity(
    total: int, waiters: Iterable[Waiter], queue: str, found: list[Room], now: float
) -> CapacityReport:
    """The report of one queue from its waiters (pure): which can never be placed, the oldest, examples."""
    served = any(queue in r.queues for r in found)
    report = CapacityReport(waiting=total, served=served)
    fits: list[Waiter] = []
    never: list[Waiter] = []
    for w in waiters:  # oldest first
        if report.oldest_s is None:
            report.oldest_s = round(max(0.0, now - w.since), 1)
        unplaceable = not served or shortfall(Ask(w.gpu, w.memory_gb), queue, found) is not None
        (never if unplaceable else fits).append(w)
    report.unplaceable = len(never)
    report.examples = [example(w, True) for w in never[:EXAMPLES]]
    report.examples += [example(w, False) for w in fits[: EXAMPLES - len(report.examples)]]
    return report


def capacity_reports(store: RunStore, workers: Mapping[str, Mapping[str, Any]]) -> dict[str, CapacityReport]:
    """Queue -> its stages waiting for capacity, for every configured queue and every queue a live
    worker serves (a queue with none waiting reports zeros: an autoscaler reads every one)."""
    found = rooms(workers)
    queues = list(dict.fromkeys([*store.settings.queues, *(q for r in found for q in sorted(r.queues))]))
    now = store.runs.server_time()
    out = {}
    for queue in queues:
        total, waiters = capacity_waiting(store, queue)
        out[queue] = queue_capacity(total, waiters, queue, found, now)
    return out


def capacity_problems(reports: Mapping[str, CapacityReport]) -> list[str]:
    """Why health is unhealthy: a queue with stages no live worker can ever hold."""
    problems = []
    for queue, c in reports.items():
        if not c.unplaceable:
            continue
        named = "; ".join(e.removesuffix(" (unplaceable)") for e in c.examples[: min(3, c.unplaceable)])
        if not c.served:
            problems.append(
                f"queue '{queue}' has {c.unplaceable} stage(s) waiting for capacity ({named}) but no live "
                f"worker serves it: start one with `chordflow worker --queues {queue}`"
            )
        else:
            problems.append(
                f"queue '{queue}' has {c.unplaceable} stage(s) waiting for more GPUs or memory than the "
                f"largest live worker serving it has ({named}): start a bigger one (`chordflow worker "
                f"--queues {queue} --gpus N --memory-gb G`) or cancel their runs"
            )
    return problems


def add_capacity(report: HealthReport, store: RunStore) -> None:
    """`health.check`'s part: `report.capacity` (queue -> as `health --json` shows it) and a problem
    for each queue with unplaceable stages."""
    reports = capacity_reports(store, report.workers)
    report.capacity = {queue: asdict(c) for queue, c in reports.items()}
    report.problems.extend(capacity_problems(reports))
