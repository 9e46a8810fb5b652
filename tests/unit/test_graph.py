"""The dependency graph: cycles, order, levels, critical path, reachability."""

from __future__ import annotations

import sys
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.language.dag import (
    children,
    critical_path,
    downstream,
    find_cycles,
    format_cycle,
    layout,
    levels,
    topological_order,
    upstream,
)

# --- strategies and brute-force oracles --------------------------------------------------


@st.composite
def dags(draw, min_nodes=1, max_nodes=30, shuffle=True):
    """A random DAG: nodes s00, s01, ... and edges only from earlier to later nodes.

    With `shuffle`, the mapping's insertion (file) order is a random permutation, so
    file order and a valid order differ.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    nodes = [f"s{i:02d}" for i in range(n)]
    deps = {}
    for j, node in enumerate(nodes):
        deps[node] = draw(st.lists(st.sampled_from(nodes[:j]), unique=True)) if j else []
    if shuffle:
        order = draw(st.permutations(nodes))
        deps = {node: deps[node] for node in order}
    return deps


@st.composite
def digraphs(draw, max_nodes=30, max_back_edges=4):
    """A random DAG with random back edges (and self-loops) added, in a random file order."""
    deps = draw(dags(max_nodes=max_nodes))
    nodes = sorted(deps)
    extra = draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)), max_size=max_back_edges))
    for needer, needed in extra:
        if needed >= needer and needed not in deps[needer]:  # needer needs a later node: a back edge
            deps[needer] = [*deps[needer], needed]
    return deps


def edges(deps):
    """(a, b) for every `b needs a`, both stages."""
    return {(a, b) for b, needs in deps.items() for a in needs if a in deps}


def acyclic(deps):
    """Kahn's algorithm, written out independently."""
    pending = {node: {n for n in needs if n in deps} for node, needs in deps.items()}
    while pending:
        ready = [node for node, needs in pending.items() if not needs]
        if not ready:
            return False
        for node in ready:
            del pending[node]
        for needs in pending.values():
            needs.difference_update(ready)
    return True


def all_paths(deps):
    """Every path (in execution direction) of a DAG, including single stages."""
    succ = {node: [b for a, b in edges(deps) if a == node] for node in deps}
    paths, stack = [], [[node] for node in deps]
    while stack:
        path = stack.pop()
        paths.append(path)
        stack.extend([*path, nxt] for nxt in succ[path[-1]])
    return paths


def all_cycles(deps):
    """Every elementary cycle, by trying every simple path from each stage through later-ranked ones."""
    rank = {node: i for i, node in enumerate(deps)}
    succ = {node: sorted({b for a, b in edges(deps) if a == node}, key=rank.get) for node in deps}
    cycles = []
    for start in deps:
        stack = [[start]]
        while stack:
            path = stack.pop()
            for nxt in succ[path[-1]]:
                if nxt == start:
                    cycles.append([*path, start])
                elif rank[nxt] > rank[start] and nxt not in path:
                    stack.append([*path, nxt])
    return sorted(cycles, key=lambda c: [rank[n] for n in c])


def ancestors(deps, node):
    found, frontier = set(), [n for n in deps[node] if n in deps]
    while frontier:
        n = frontier.pop()
        if n not in found:
            found.add(n)
            frontier.extend(m for m in deps[n] if m in deps)
    return found


# --- children, upstream, downstream --------------------------------------------------------


def test_children_lists_dependents_in_file_order_without_duplicates_or_unknown_ids():
    deps = {"a": [], "c": ["a", "a"], "b": ["a", "ghost"], "d": ["b"]}
    assert children(deps) == {"a": ["c", "b"], "c": [], "b": ["d"], "d": []}


def test_upstream_and_downstream_are_transitive_and_exclude_the_start():
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": ["c"], "x": []}
    assert upstream(deps, ["c"]) == {"a", "b"}
    assert downstream(deps, ["b"]) == {"c", "d"}
    assert upstream(deps, ["b", "d"]) == {"a", "b", "c"}  # b is reached from d
    assert upstream(deps, ["x"]) == set() == downstream(deps, ["x"])


def test_upstream_includes_a_stage_that_is_in_a_cycle_with_itself():
    assert upstream({"a": ["b"], "b": ["a"]}, ["a"]) == {"a", "b"}


def test_unknown_ids_are_ignored_by_upstream():
    assert upstream({"a": ["ghost"]}, ["a", "nobody"]) == set()


@given(dags())
def test_upstream_and_downstream_match_brute_force(deps):
    for node in deps:
        assert upstream(deps, [node]) == ancestors(deps, node)
        assert downstream(deps, [node]) == {m for m in deps if node in ancestors(deps, m)}


# --- cycles ------------------------------------------------------------------------------------


def test_an_acyclic_graph_has_no_cycles():
    assert find_cycles({"a": [], "b": ["a"], "c": ["a", "b"]}) == []


def test_a_cycle_is_a_closed_path_in_execution_direction_from_its_earliest_stage():
    # b needs a, c needs b, a needs c: a → b → c → a
    deps = {"x": [], "a": ["c"], "b": ["a"], "c": ["b"]}
    assert find_cycles(deps) == [["a", "b", "c", "a"]]
    assert format_cycle(["a", "b", "c", "a"]) == "a → b → c → a"


def test_rotation_follows_file_order_not_names():
    deps = {"c": ["b"], "b": ["a"], "a": ["c"]}
    assert find_cycles(deps) == [["c", "a", "b", "c"]]


def test_a_self_loop_is_a_cycle_of_one():
    assert find_cycles({"a": ["a"], "b": ["a"]}) == [["a", "a"]]


def test_every_cycle_is_reported_once_in_file_order():
    deps = {"a": ["b", "c"], "b": ["a"], "c": ["a", "c"], "d": ["e"], "e": ["d"]}
    assert find_cycles(deps) == [["a", "b", "a"], ["a", "c", "a"], ["c", "c"], ["d", "e", "d"]]


def test_needs_that_are_not_stages_are_ignored():
    assert find_cycles({"a": ["ghost"], "b": ["a", "b"]}) == [["b", "b"]]


def test_limit_caps_the_number_of_cycles_but_every_tangle_gets_one():
    dense = {f"d{i}": [f"d{j}" for j in range(6) if j != i] for i in range(6)}
    deps = {**dense, "x": ["y"], "y": ["x"]}
    cycles = find_cycles(deps, limit=3)
    assert len(cycles) == 3
    assert ["x", "y", "x"] in cycles
    assert find_cycles(deps, limit=0) == []


def test_a_dense_tangle_stops_at_the_budget_and_still_reports_every_tangle():
    # 14 stages that all need each other hold about 10^10 elementary cycles
    dense = {f"d{i:02d}": [f"d{j:02d}" for j in range(14) if j != i] for i in range(14)}
    deps = {**dense, "x": ["y"], "y": ["x"]}
    cycles = find_cycles(deps, limit=10**9, budget=20_000)
    assert 1 < len(cycles) < 20_000
    assert ["x", "y", "x"] in cycles
    for cycle in cycles:
        assert cycle[0] == cycle[-1] and len(set(cycle)) == len(cycle) - 1


def test_a_10000_stage_ring_is_found_without_recursion():
    n = 10_000
    deps = {f"s{i}": [f"s{(i - 1) % n}"] for i in range(n)}
    assert sys.getrecursionlimit() < n
    assert find_cycles(deps) == [[*deps, "s0"]]


@given(dags())
def test_find_cycles_is_empty_for_a_dag(deps):
    assert find_cycles(deps) == []


@given(digraphs())
def test_find_cycles_is_empty_exactly_when_the_graph_is_acyclic(deps):
    assert (find_cycles(deps) == []) == acyclic(deps)


@given(dags(min_nodes=2), st.data())
def test_a_back_edge_along_a_path_makes_a_reported_cycle(deps, data):
    pairs = sorted(edges(deps))
    if not pairs:
        a = data.draw(st.sampled_from(sorted(deps)))
        deps[a] = [*deps[a], a]
    else:
        a, b = data.draw(st.sampled_from(pairs))  # b needs a; now a needs b too
        deps[a] = [*deps[a], b]
    cycles = find_cycles(deps)
    assert cycles
    graph = edges(deps)
    rank = {node: i for i, node in enumerate(deps)}
    for cycle in cycles:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle)) == len(cycle) - 1, "elementary: no stage twice"
        assert all((x, y) in graph for x, y in pairwise(cycle))
        assert min(cycle, key=rank.get) == cycle[0]
    keys = [tuple(c) for c in cycles]
    assert len(set(keys)) == len(keys)


@settings(max_examples=200, deadline=None)
@given(digraphs(max_nodes=7, max_back_edges=10))
def test_find_cycles_matches_brute_force_enumeration(deps):
    assert find_cycles(deps, limit=10**6) == all_cycles(deps)


# --- topological order ---------------------------------------------------------------------------


def test_topological_order_keeps_file_order_when_it_is_valid():
    assert topological_order({"b": [], "a": ["b"], "c": []}) == ["b", "a", "c"]


def test_topological_order_breaks_ties_by_file_order():
    deps = {"z": ["m"], "y": [], "m": [], "a": ["y"]}
    assert topological_order(deps) == ["y", "m", "z", "a"]


def test_topological_order_refuses_a_cycle_and_names_it():
    with pytest.raises(ValueError, match="a → b → a"):
        topological_order({"a": ["b"], "b": ["a"], "c": []})


def test_a_10000_stage_chain_needs_no_recursion():
    n = 10_000
    deps = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(n)}
    order = topological_order(deps)
    assert order == list(deps)
    assert levels(deps)[f"s{n - 1}"] == n - 1
    assert critical_path(deps, {}) == (order, float(n))
    assert find_cycles(deps) == []
    assert len(upstream(deps, [f"s{n - 1}"])) == n - 1
    assert len(downstream(deps, ["s0"])) == n - 1


@given(dags())
def test_topological_order_respects_every_edge(deps):
    order = topological_order(deps)
    assert sorted(order) == sorted(deps)
    position = {node: i for i, node in enumerate(order)}
    assert all(position[a] < position[b] for a, b in edges(deps))


@given(dags(shuffle=False))
def test_topological_order_of_a_file_already_in_order_is_the_file_order(deps):
    assert topological_order(deps) == list(deps)


@given(dags())
def test_topological_order_takes_the_earliest_ready_stage_in_file_order(deps):
    placed: list[str] = []
    while len(placed) < len(deps):  # brute force: scan the file for the first stage whose needs are placed
        placed.append(next(n for n in deps if n not in placed and all(p in placed for p in deps[n])))
    assert topological_order(deps) == placed


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_layout_is_the_order_the_levels_and_the_critical_path(data):
    deps = data.draw(dags(min_nodes=0))
    estimates = data.draw(
        st.dictionaries(st.sampled_from(sorted(deps) or ["x"]), st.integers(0, 9).map(float))
    )
    assert layout(deps, estimates) == (topological_order(deps), levels(deps), *critical_path(deps, estimates))


def test_layout_refuses_a_cycle_as_topological_order_does():
    with pytest.raises(ValueError, match="a → b → a"):
        layout({"a": ["b"], "b": ["a"], "c": []}, {})


# --- levels ------------------------------------------------------------------------------------------


def test_levels_count_the_longest_chain_of_needs():
    deps = {"a": [], "b": ["a"], "c": ["a", "b"], "d": [], "e": ["ghost"]}
    assert levels(deps) == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 0}


@given(dags())
def test_levels_are_consistent(deps):
    level = levels(deps)
    assert set(level) == set(deps)
    for node, needs in deps.items():
        assert level[node] == (1 + max(level[n] for n in needs) if needs else 0)
    for path in all_paths(deps) if len(deps) <= 10 else []:
        assert level[path[-1]] >= len(path) - 1


# --- critical path -------------------------------------------------------------------------------


def test_critical_path_sums_estimates_along_the_longest_path():
    deps = {"data": [], "fast": ["data"], "slow": ["data"], "report": ["fast", "slow"]}
    estimates = {"data": 2.0, "fast": 1.0, "slow": 10.0, "report": 0.5}
    assert critical_path(deps, estimates) == (["data", "slow", "report"], 12.5)


def test_a_missing_estimate_counts_one_second():
    assert critical_path({"a": [], "b": ["a"]}, {"a": 3.0, "b": None}) == (["a", "b"], 4.0)


def test_critical_path_ties_go_to_the_earliest_stage_in_file_order():
    deps = {"x": [], "b": [], "a": [], "join": ["a", "b"], "y": []}
    assert critical_path(deps, {}) == (["b", "join"], 2.0)
    assert critical_path({"p": [], "q": []}, {}) == (["p"], 1.0)


def test_critical_path_of_nothing_is_empty():
    assert critical_path({}, {}) == ([], 0.0)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_critical_path_matches_brute_force(data):
    deps = data.draw(dags(max_nodes=10))
    estimates = data.draw(
        st.dictionaries(st.sampled_from(sorted(deps)), st.integers(0, 20).map(float), max_size=len(deps))
    )

    def length(path):
        return sum(estimates.get(node, 1.0) for node in path)

    path, total = critical_path(deps, estimates)
    assert total == max(length(p) for p in all_paths(deps))
    assert length(path) == total
    assert all(a in deps[b] for a, b in pairwise(path))
