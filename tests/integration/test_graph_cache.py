"""A process keeps the graphs of the runs it serves in memory, bounded in nodes, not in runs.

A worker that serves many large runs used to keep up to 256 graphs whatever their size (about 4 KB a
node: 256 runs of 10,000 stages would be 10 GB in every process). Now the least recently used graph
goes first once the graphs held pass the budget, and a graph over the budget is still kept alone.
Real Redis, no worker: submitting a run stores its graph and caches it in the submitting store
(without the check of the queues' workers: none runs here).
"""

from __future__ import annotations

import logging

import pytest

from orchestration.api import Client
from orchestration.language.validation import validate_data

from .conftest import pipeline


def chain(name: str, length: int) -> dict:
    stages = [{"id": "s0", "uses": "noop"}]
    stages += [{"id": f"s{i}", "uses": "noop", "needs": [f"s{i - 1}"]} for i in range(1, length)]
    return pipeline(name, *stages)


@pytest.fixture()
def client(bare_cluster) -> Client:
    return Client(bare_cluster.settings.model_copy(update={"graph_cache_nodes": 500}))


def cached_nodes(client: Client) -> int:
    return sum(len(graph.nodes) for graph in client.store.runs._graphs.values())


def test_graphs_held_stay_within_the_budget_and_the_recent_ones_stay(client):
    run_ids = [
        client.submit(validate_data(chain(f"cache-{i}", 200)), check_types=False).run_id for i in range(10)
    ]

    # 2,000 nodes submitted, at most 500 held: the two most recent runs' graphs
    assert cached_nodes(client) <= 500
    assert set(client.store.runs._graphs) == set(run_ids[-2:])
    recent = client.store.runs.graph(run_ids[-1])
    assert client.store.runs.graph(run_ids[-1]) is recent

    # a graph that was dropped is read again from Redis, whole, and becomes the most recent
    first = client.store.runs.graph(run_ids[0])
    assert [n.id for n in first.nodes] == [f"s{i}" for i in range(200)]
    assert first.children["s0"] == ["s1"] and first.children["s199"] == []
    assert run_ids[0] in client.store.runs._graphs
    assert cached_nodes(client) <= 500


def test_a_graph_over_the_budget_is_still_kept(client):
    big = client.submit(validate_data(chain("cache-big", 800)), check_types=False).run_id
    assert set(client.store.runs._graphs) == {big}
    graph = client.store.runs.graph(big)
    assert client.store.runs.graph(big) is graph  # not read and parsed again for every stage

    small = client.submit(validate_data(chain("cache-small", 10)), check_types=False).run_id
    assert set(client.store.runs._graphs) == {small}  # the big one made room


def test_reading_a_dropped_graph_again_is_said_in_the_log(client, caplog):
    first, second = (
        client.submit(validate_data(chain(f"cache-thrash-{i}", 300)), check_types=False).run_id
        for i in range(2)
    )
    with caplog.at_level(logging.WARNING, logger="chordflow.runs"):
        client.store.runs.graph(second)  # cached: nothing said
        client.store.runs.graph(first)  # dropped when the second came in: read again, said
        client.store.runs.graph(second)  # and now the second was dropped for it
        client.store.runs.graph(first)  # said once a run
    said = [r.getMessage() for r in caplog.records if r.name == "chordflow.runs"]
    tail = "was read and parsed again, dropped from this process's cache of 500 stages for other runs'"
    assert said == [
        f"run {first}: its graph (300 stages) {tail} (CHORDFLOW_GRAPH_CACHE_NODES)",
        f"run {second}: its graph (300 stages) {tail} (CHORDFLOW_GRAPH_CACHE_NODES)",
    ]
