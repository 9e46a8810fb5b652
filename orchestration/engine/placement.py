"""Submit-time placement: can some live worker serving a stage's queue ever hold what it asks?

A stage that asks for GPUs or memory (`resources: {gpu, memory_gb}`) starts on a worker only when
that worker's ledger has the room (limits.py); one that asks for more than the largest live worker
serving its queue has would wait in Redis until a bigger worker joins. `Client.submit` refuses
such a run before writing anything (NoCapacity, exit 2), unless told not to check (`--no-check`:
then it is only warned about). A queue no live worker serves is a warning, never a refusal: a
worker may be on its way (an autoscaler scaling up from zero).

`rooms` reads what each live worker can give one stage from its heartbeat (its "capacity", else
its "machine", as the engine's ledger does: capacity.worker_capacity); `shortfall` and
`placement` are pure; `check_placement` reads the workers and refuses or warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestration.engine.capacity import worker_capacity
from orchestration.errors import NoCapacity, listing
from orchestration.graph.resolve import Node, RunGraph

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore


class QueueUnserved(UserWarning):
    """Stages ask for GPUs or memory on a queue no live worker serves: they wait until one does."""


@dataclass(frozen=True)
class Room:
    """All one live worker has for a single stage: its GPUs and memory (GB), and its queues."""

    worker: str
    queues: frozenset[str]
    gpus: int
    memory_gb: float


@dataclass(frozen=True)
class Ask:
    """What one instance of a stage asks of its worker."""

    gpu: int = 0
    memory_gb: float | None = None

    @property
    def any(self) -> bool:
        return self.gpu > 0 or bool(self.memory_gb)

    def fits(self, room: Room) -> bool:
        return self.gpu <= room.gpus and (self.memory_gb or 0.0) <= room.memory_gb + 1e-9

    def __str__(self) -> str:
        """`4 GPUs`, `64 GB of memory`, `1 GPU and 64 GB of memory`."""
        parts = [gpus(self.gpu)] if self.gpu else []
        if self.memory_gb:
            parts.append(f"{self.memory_gb:g} GB of memory")
        return " and ".join(parts)


def gpus(n: int) -> str:
    return f"{n} GPU{'' if n == 1 else 's'}"


def ask_of(node: Node) -> Ask:
    resources = node.resources
    if resources is None:
        return Ask()
    return Ask(resources.gpu, resources.memory_gb)


def rooms(workers: Mapping[str, Mapping[str, Any]]) -> list[Room]:
    """What each live worker (`store.fleet.live_workers()`) can give one stage, by its heartbeat."""
    out = []
    for name, info in sorted(workers.items()):
        try:
            capacity = worker_capacity(name, info)
        except (TypeError, ValueError):  # a heartbeat from another version: nothing known of it
            continue
        queues = frozenset(str(q) for q in info.get("queues") or ())
        out.append(Room(name, queues, len(capacity.devices), capacity.memory_gb))
    return out


def shortfall(ask: Ask, queue: str, found: Iterable[Room]) -> str | None:
    """Why no live worker serving `queue` can ever hold `ask` (`the largest live worker serving
    queue 'gpu' has 2`), or None: one can, or none serves the queue (then nothing is known)."""
    serving = [r for r in found if queue in r.queues]
    if not ask.any or not serving or any(ask.fits(r) for r in serving):
        return None
    most_gpus = max(r.gpus for r in serving)
    most_gb = max(r.memory_gb for r in serving)
    short = []
    if ask.gpu > most_gpus:
        short.append(str(most_gpus) if not ask.memory_gb else gpus(most_gpus))
    if ask.memory_gb and ask.memory_gb > most_gb + 1e-9:
        short.append(f"{most_gb:g} GB")
    if short:
        return f"the largest live worker serving queue '{queue}' has {' and '.join(short)}"
    shown = "; ".join(f"{r.worker}: {gpus(r.gpus)}, {r.memory_gb:g} GB" for r in serving[:3])
    more = f"; {len(serving) - 3} more" if len(serving) > 3 else ""
    return f"no live worker serving queue '{queue}' has both ({shown}{more})"


@dataclass
class Placement:
    """What `placement` found: stages no live worker can hold, and queues no live worker serves."""

    refused: dict[str, str] = field(default_factory=dict)  # stage id -> why, one line
    unserved: dict[str, list[str]] = field(default_factory=dict)  # queue -> stage ids asking there


def placement(nodes: Iterable[Node], found: Iterable[Room]) -> Placement:
    """Where the stages that ask for GPUs or memory stand against the live workers `found`."""
    found = list(found)
    served = {q for r in found for q in r.queues}
    out = Placement()
    for node in nodes:
        ask = ask_of(node)
        if not ask.any:
            continue
        if node.queue not in served:
            out.unserved.setdefault(node.queue, []).append(node.id)
            continue
        why = shortfall(ask, node.queue, found)
        if why is not None:
            out.refused[node.id] = f"stage '{node.id}' asks for {ask}; {why}"
    return out


def check_placement(store: RunStore, graph: RunGraph, refuse: bool = True) -> None:
    """Refuse (NoCapacity) a run with stages no live worker serving their queue can ever hold;
    with `refuse` False, only warn (QueueUnserved) of them. A queue no live worker serves is
    always a warning only. Reads the workers' heartbeats (only when a stage asks for GPUs or
    memory) and writes nothing."""
    if not any(ask_of(node).any for node in graph.nodes):
        return
    found = placement(graph.nodes, rooms(store.fleet.live_workers()))
    if found.refused and refuse:
        raise NoCapacity(list(found.refused), list(found.refused.values()))
    for line in found.refused.values():
        warnings.warn(f"{line}: it waits until a worker that can hold it joins", QueueUnserved, stacklevel=3)
    for queue, ids in found.unserved.items():
        warnings.warn(
            f"no live worker serves queue '{queue}': {listing(ids)} (asking for GPUs or memory there) "
            f"wait{'s' if len(ids) == 1 else ''} until one does (`chordflow worker --queues {queue}`)",
            QueueUnserved,
            stacklevel=3,
        )
