"""The dependency graph of a pipeline: cycles, order, levels, critical path.

Every function takes `deps`, a mapping of stage id -> ids it needs. The mapping's
insertion order is the file order and breaks every tie, so each result is
deterministic. Needs that name no key of `deps` are ignored here (validation
reports them as missing). Edges are read in execution direction: `a → b` means
`b` needs `a`. Everything is iterative and O(V + E), so a 10,000-stage chain
never meets the recursion limit.
"""

from __future__ import annotations

import graphlib
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence

Deps = Mapping[str, Sequence[str]]

CYCLE_WORK_BUDGET = 1_000_000
"""Edge visits `find_cycles` may spend beyond the first cycle of each tangle."""


def _links(deps: Deps) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(parents, children): the needs that are stages, and the stages that need each one.

    Both without duplicates; children in file order.
    """
    parents: dict[str, list[str]] = {}
    kids: dict[str, list[str]] = {node: [] for node in deps}
    for node, needs in deps.items():
        known = [n for n in needs if n in kids]
        if len(known) > 1 and len(set(known)) < len(known):
            known = list(dict.fromkeys(known))
        parents[node] = known
        for need in known:
            kids[need].append(node)
    return parents, kids


def children(deps: Deps) -> dict[str, list[str]]:
    """Stage id -> ids that need it, each list in file order, without duplicates."""
    return _links(deps)[1]


def _reach(start: Iterable[str], step: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [n for s in start for n in step.get(s, ())]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(step[node])
    return seen


def upstream(deps: Deps, ids: Iterable[str]) -> set[str]:
    """Every stage that `ids` need, directly or not; an id itself only if one of them needs it."""
    return _reach(ids, _links(deps)[0])


def downstream(deps: Deps, ids: Iterable[str]) -> set[str]:
    """Every stage that needs one of `ids`, directly or not; an id itself only if it needs one of them."""
    return _reach(ids, children(deps))


def _peel(parents: Mapping[str, Sequence[str]], kids: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's algorithm: stages in an order where each follows its needs.

    Stages in or after a cycle are never ready and are left out.
    """
    waiting = {node: len(needs) for node, needs in parents.items()}
    order = [node for node, count in waiting.items() if not count]
    for node in order:  # `order` grows while it is read: a FIFO queue
        for kid in kids[node]:
            waiting[kid] -= 1
            if not waiting[kid]:
                order.append(kid)
    return order


# --- cycles -------------------------------------------------------------------------


def _components(nodes: Sequence[str], succ: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, with an explicit stack).

    Only edges between `nodes` count. Each component lists its stages in the
    order of `nodes`.
    """
    allowed = set(nodes)
    rank = {node: i for i, node in enumerate(nodes)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(succ[root]))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in allowed:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(succ[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    found.append(sorted(component, key=rank.__getitem__))
    return found


def _tangled(component: list[str], succ: Mapping[str, Sequence[str]]) -> bool:
    """True if the component holds a cycle: two stages or more, or a self-loop."""
    return len(component) > 1 or component[0] in succ[component[0]]


class _Allowance:
    """Edge visits left to the cycle search; while `protected`, running out does not stop it."""

    def __init__(self, edges: int):
        self.left = edges
        self.protected = True

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0 or self.protected


def _circuits(
    start: str, allowed: set[str], succ: Mapping[str, Sequence[str]], allowance: _Allowance
) -> Iterator[list[str]]:
    """Johnson's circuit search: every elementary cycle through `start` within `allowed`.

    Yields closed paths in lexicographic order of the successor lists. Between two
    cycles it does O(V + E) work; it stops when `allowance` runs out.
    """
    blocked = {start}
    blocks: dict[str, set[str]] = {}
    path = [start]
    closed = [False]
    work = [iter(succ[start])]
    while work:
        for nxt in work[-1]:
            if not allowance.spend():
                return
            if nxt == start:
                yield [*path, start]
                closed[-1] = True
            elif nxt in allowed and nxt not in blocked:
                blocked.add(nxt)
                path.append(nxt)
                closed.append(False)
                work.append(iter(succ[nxt]))
                break
        else:
            work.pop()
            node = path.pop()
            if closed.pop():
                unblock = [node]
                while unblock:
                    member = unblock.pop()
                    if member in blocked:
                        blocked.discard(member)
                        unblock.extend(blocks.pop(member, ()))
                if closed:
                    closed[-1] = True
            else:
                for nxt in succ[node]:
                    if nxt in allowed:
                        blocks.setdefault(nxt, set()).add(node)


def find_cycles(deps: Deps, limit: int = 50, *, budget: int = CYCLE_WORK_BUDGET) -> list[list[str]]:
    """Elementary cycles of the graph, at most `limit`, each as a closed path `[a, b, c, a]`.

    A path runs in execution direction (`b` needs `a`, `c` needs `b`, `a` needs `c`);
    a self-loop is `[a, a]`. Each cycle is reported once, starting at its earliest
    stage in file order, and the list is sorted by file order. Returns `[]` exactly
    when the graph is acyclic.

    Only strongly connected tangles among the stages Kahn's algorithm cannot order
    are searched, so a large acyclic graph costs one linear pass. Each tangle
    reports at least one cycle (while `limit` allows); past that, the search stops
    after `budget` edge visits, so a dense tangle with an exponential number of
    cycles cannot hang validation.
    """
    if limit <= 0:
        return []
    parents, succ = _links(deps)
    ordered = set(_peel(parents, succ))
    if len(ordered) == len(deps):
        return []
    rank = {node: i for i, node in enumerate(deps)}
    stuck = [node for node in deps if node not in ordered]
    tangles = [c for c in _components(stuck, succ) if _tangled(c, succ)]
    tangles.sort(key=lambda c: rank[c[0]])
    cycles: list[list[str]] = []
    allowance = _Allowance(budget)
    for number, tangle in enumerate(tangles):
        # leave room for one cycle from each tangle still to come
        room = max(1, limit - len(cycles) - (len(tangles) - number - 1))
        found_here = 0
        allowance.protected = True  # the first cycle of each tangle is always found
        nodes = tangle
        while nodes and found_here < room:
            # Johnson: the tangle holding the earliest remaining stage, among stages not before it
            sub = [c for c in _components(nodes, succ) if _tangled(c, succ)]
            if not sub:
                break
            first = min(sub, key=lambda c: rank[c[0]])
            start = first[0]
            for cycle in _circuits(start, set(first), succ, allowance):
                cycles.append(cycle)
                found_here += 1
                allowance.protected = False
                if found_here >= room:
                    break
            if allowance.left < 0:
                break
            nodes = [n for n in nodes if rank[n] > rank[start]]
        if len(cycles) >= limit:
            break
    cycles.sort(key=lambda c: [rank[n] for n in c])
    return cycles[:limit]


def format_cycle(cycle: Sequence[str]) -> str:
    """`['a', 'b', 'a']` -> `'a → b → a'`."""
    return " → ".join(cycle)


# --- order ----------------------------------------------------------------------------


def _cycle_error(deps: Deps) -> graphlib.CycleError:
    cycle = find_cycles(deps, limit=1)[0]
    return graphlib.CycleError(f"stages form a cycle: {format_cycle(cycle)}", cycle)


def topological_order(deps: Deps) -> list[str]:
    """Stages so that each comes after everything it needs.

    Among stages that are ready at the same time the earliest in file order comes
    first, so a file already in a valid order keeps its order. Raises
    `graphlib.CycleError` (a `ValueError`) naming one cycle if there is any.
    """
    parents, kids = _links(deps)
    return _file_order(deps, parents, kids)


def _file_order(
    deps: Deps, parents: Mapping[str, Sequence[str]], kids: Mapping[str, Sequence[str]]
) -> list[str]:
    """Kahn's algorithm with a heap of the ready stages by file order.

    (graphlib's TopologicalSorter hands out ready stages in the order they became ready;
    picking among them by file order meant driving it one stage at a time, get_ready() and
    done() for each: three times slower on 10,000 stages.)
    """
    rank = {node: i for i, node in enumerate(deps)}
    waiting = {node: len(needs) for node, needs in parents.items()}
    ready = [(rank[node], node) for node, count in waiting.items() if not count]  # in file order: a heap
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for kid in kids[node]:
            waiting[kid] -= 1
            if not waiting[kid]:
                heapq.heappush(ready, (rank[kid], kid))
    if len(order) < len(parents):
        raise _cycle_error(deps)
    return order


def _any_order(
    deps: Deps, parents: Mapping[str, Sequence[str]], kids: Mapping[str, Sequence[str]]
) -> list[str]:
    """Some topological order, for computations whose result does not depend on which.

    Faster than `_file_order`, which keeps a heap for its file-order ties.
    """
    order = _peel(parents, kids)
    if len(order) < len(parents):
        raise _cycle_error(deps)
    return order


def levels(deps: Deps) -> dict[str, int]:
    """Stage id (in file order) -> 0 if it needs nothing, else 1 + the highest level it needs.

    Raises `graphlib.CycleError` (a `ValueError`) if the stages form a cycle.
    """
    parents, kids = _links(deps)
    return _levels(deps, parents, _any_order(deps, parents, kids))


def _levels(deps: Deps, parents: Mapping[str, Sequence[str]], order: Sequence[str]) -> dict[str, int]:
    level: dict[str, int] = {}
    for node in order:
        level[node] = 1 + max([level[p] for p in parents[node]], default=-1)
    return {node: level[node] for node in deps}


def critical_path(deps: Deps, estimates: Mapping[str, float | None]) -> tuple[list[str], float]:
    """The longest path by summed estimates (seconds; a missing estimate counts 1.0).

    Returns the path in execution order and its length: the makespan with as many
    workers as stages. Ties go to the stage earliest in file order. Raises
    `graphlib.CycleError` (a `ValueError`) if the stages form a cycle.
    """
    if not deps:
        return [], 0.0
    parents, kids = _links(deps)
    return _critical_path(deps, parents, _any_order(deps, parents, kids), estimates)


def _critical_path(
    deps: Deps,
    parents: Mapping[str, Sequence[str]],
    order: Sequence[str],
    estimates: Mapping[str, float | None],
) -> tuple[list[str], float]:
    """critical_path over `order`, any topological order of a non-empty `deps`."""
    rank = {node: i for i, node in enumerate(deps)}
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in order:
        needs = parents[node]
        # max() keeps the first of equals: list the needs in file order
        best = max(sorted(needs, key=rank.__getitem__), key=finish.__getitem__) if needs else None
        estimate = estimates.get(node)
        finish[node] = (1.0 if estimate is None else float(estimate)) + (
            0.0 if best is None else finish[best]
        )
        via[node] = best
    end = max(deps, key=finish.__getitem__)
    path = [end]
    while (before := via[path[-1]]) is not None:
        path.append(before)
    path.reverse()
    return path, finish[end]


def layout(
    deps: Deps, estimates: Mapping[str, float | None]
) -> tuple[list[str], dict[str, int], list[str], float]:
    """(topological_order, levels, *critical_path) of `deps`, reading its links once: what
    resolve needs of a graph. Raises `graphlib.CycleError` as they do."""
    parents, kids = _links(deps)
    order = _file_order(deps, parents, kids)
    path, makespan = _critical_path(deps, parents, order, estimates) if deps else ([], 0.0)
    return order, _levels(deps, parents, order), path, makespan
