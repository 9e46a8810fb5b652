"""Placement at submit (engine/placement.py), the capacity health reports (fleet/capacity.py) and how
waiting stages are worded (cli/capacity_view.py): pure functions, no Redis."""

from __future__ import annotations

import warnings

import pytest

from orchestration.cli.capacity_view import capacity_lines, state_label
from orchestration.engine.capacity_reads import Waiter
from orchestration.engine.placement import (
    Ask,
    QueueUnserved,
    Room,
    check_placement,
    placement,
    rooms,
    shortfall,
)
from orchestration.errors import InvalidInput, NoCapacity
from orchestration.fleet.capacity import capacity_problems, queue_capacity
from orchestration.graph.resolve import Node, RunGraph
from orchestration.language.options import Resources


def node(stage_id: str, queue: str = "gpu", gpu: int = 0, memory_gb: float | None = None) -> Node:
    asks = Resources(gpu=gpu, memory_gb=memory_gb) if gpu or memory_gb else None
    return Node(id=stage_id, type="noop", queue=queue, resources=asks)


def heartbeat(queues: list[str], gpus: int, memory_gb: float, capacity: dict | None = None) -> dict:
    info: dict = {"queues": queues, "machine": {"cpus": 8, "memory_gb": memory_gb, "gpus": gpus}}
    if capacity is not None:
        info["capacity"] = capacity
    return info


GPU_BOX = Room("box/gpu", frozenset({"gpu"}), gpus=2, memory_gb=64.0)
BIG_BOX = Room("big/main", frozenset({"cpu", "highmem"}), gpus=0, memory_gb=256.0)


# -- what a worker has --------------------------------------------------------------------------------


def test_a_worker_has_what_its_capacity_says_else_its_machine():
    found = rooms(
        {
            "old/main": heartbeat(["cpu"], gpus=0, memory_gb=16),
            "new/gpu": heartbeat(
                ["gpu"], gpus=4, memory_gb=128, capacity={"gpus": 2, "devices": ["0", "1"], "memory_gb": 100}
            ),
        }
    )
    assert found == [
        Room("new/gpu", frozenset({"gpu"}), 2, 100.0),
        Room("old/main", frozenset({"cpu"}), 0, 16.0),
    ]


def test_an_ask_is_worded_for_people():
    assert str(Ask(4)) == "4 GPUs"
    assert str(Ask(1)) == "1 GPU"
    assert str(Ask(0, 64)) == "64 GB of memory"
    assert str(Ask(1, 24.5)) == "1 GPU and 24.5 GB of memory"
    assert not Ask().any and Ask(0, 1).any


# -- shortfall: why no live worker can ever hold a stage --------------------------------------------------


def test_a_stage_asking_more_gpus_than_the_largest_worker_has_is_short():
    assert shortfall(Ask(4), "gpu", [GPU_BOX]) == "the largest live worker serving queue 'gpu' has 2"
    assert shortfall(Ask(2), "gpu", [GPU_BOX]) is None


def test_memory_is_compared_with_the_largest_worker_of_the_queue():
    assert shortfall(Ask(0, 512), "highmem", [GPU_BOX, BIG_BOX]) == (
        "the largest live worker serving queue 'highmem' has 256 GB"
    )
    assert shortfall(Ask(0, 256), "highmem", [GPU_BOX, BIG_BOX]) is None
    # the gpu box has 64 GB but does not serve highmem
    assert shortfall(Ask(0, 64), "cpu", [GPU_BOX, BIG_BOX]) is None


def test_gpus_and_memory_must_fit_on_one_worker():
    small_gpus_much_memory = Room("a/gpu", frozenset({"gpu"}), 1, 512.0)
    found = [GPU_BOX, small_gpus_much_memory]
    assert shortfall(Ask(2, 128), "gpu", found) == (
        "no live worker serving queue 'gpu' has both (box/gpu: 2 GPUs, 64 GB; a/gpu: 1 GPU, 512 GB)"
    )
    assert shortfall(Ask(4, 1024), "gpu", found) == (
        "the largest live worker serving queue 'gpu' has 2 GPUs and 512 GB"
    )
    assert shortfall(Ask(1, 512), "gpu", found) is None


def test_a_queue_no_live_worker_serves_is_not_a_shortfall():
    assert shortfall(Ask(8), "gpu", [BIG_BOX]) is None
    assert shortfall(Ask(8), "gpu", []) is None


# -- placement of a graph ----------------------------------------------------------------------------------


def test_placement_refuses_what_no_worker_can_hold_and_lists_unserved_queues():
    nodes = [
        node("train", gpu=4),
        node("fits", gpu=2),
        node("plain", queue="cpu"),
        node("huge", queue="highmem", memory_gb=300),
        node("nowhere", queue="tpu", gpu=1),
    ]
    found = placement(nodes, [GPU_BOX, BIG_BOX])
    assert found.refused == {
        "train": "stage 'train' asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2",
        "huge": "stage 'huge' asks for 300 GB of memory; the largest live worker serving queue 'highmem' "
        "has 256 GB",
    }
    assert found.unserved == {"tpu": ["nowhere"]}


def test_the_refusal_says_how_to_queue_it_anyway_and_exits_2():
    error = NoCapacity(
        ["train"], ["stage 'train' asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2"]
    )
    assert isinstance(error, InvalidInput) and error.exit_code == 2
    assert str(error) == (
        "stage 'train' asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2 "
        "(submit with --no-check to queue it anyway)"
    )
    two = NoCapacity(["a", "b"], ["stage 'a' asks ...", "stage 'b' asks ..."])
    assert str(two).splitlines() == [
        (
            "2 stages ask for more than any live worker serving their queue has "
            "(submit with --no-check to queue them anyway):"
        ),
        "  stage 'a' asks ...",
        "  stage 'b' asks ...",
    ]


class Heartbeats:
    """A store's `fleet` with only heartbeats."""

    def __init__(self, workers: dict):
        self.workers = workers

    def live_workers(self) -> dict:
        return self.workers


class Workers:
    """A store with only heartbeats (check_placement reads nothing else)."""

    def __init__(self, workers: dict):
        self.fleet = Heartbeats(workers)


def test_check_placement_refuses_or_only_warns():
    graph = RunGraph(name="p", version="1", nodes=(node("train", gpu=4), node("tpu", queue="tpu", gpu=1)))
    store = Workers({"box/gpu": heartbeat(["gpu"], gpus=2, memory_gb=64)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            NoCapacity, match="asks for 4 GPUs; the largest live worker serving queue 'gpu' has 2"
        ):
            check_placement(store, graph)  # type: ignore[arg-type]
    assert caught == []  # refused before any warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_placement(store, graph, refuse=False)  # type: ignore[arg-type]
    said = [str(w.message) for w in caught if w.category is QueueUnserved]
    assert said[0].startswith("stage 'train' asks for 4 GPUs") and "waits until" in said[0]
    assert said[1].startswith("no live worker serves queue 'tpu': tpu (asking for GPUs or memory there)")


def test_a_warning_for_many_stages_names_ten_and_counts_the_rest():
    graph = RunGraph(
        name="p", version="1", nodes=tuple(node(f"t{i}", queue="tpu", gpu=1) for i in range(800))
    )
    store = Workers({"box/gpu": heartbeat(["gpu"], gpus=2, memory_gb=64)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_placement(store, graph, refuse=False)  # type: ignore[arg-type]
    (said,) = [str(w.message) for w in caught if w.category is QueueUnserved]
    assert said.startswith(
        "no live worker serves queue 'tpu': t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, ... (790 more)"
    )
    assert "t10" not in said and len(said) < 300


# -- health: stages waiting for capacity -------------------------------------------------------------------


def test_waiting_stages_that_no_worker_can_hold_are_unplaceable():
    waiters = [
        Waiter("r1", "train", None, 4, None, since=1000.0),
        Waiter("r2", "embed", 3, 1, 24.0, since=1010.0),
    ]
    report = queue_capacity(2, waiters, "gpu", [GPU_BOX], now=1100.0)
    assert (report.waiting, report.unplaceable, report.oldest_s, report.served) == (2, 1, 100.0, True)
    assert report.examples == ["r1/train asks 4 GPU (unplaceable)", "r2/embed[3] asks 1 GPU, 24 GB"]
    problems = capacity_problems({"gpu": report})
    assert len(problems) == 1 and "queue 'gpu' has 1 stage(s) waiting for more GPUs" in problems[0]
    assert "r1/train asks 4 GPU" in problems[0] and "--gpus N" in problems[0]


def test_stages_waiting_on_a_queue_no_worker_serves_are_unplaceable():
    report = queue_capacity(1, [Waiter("r1", "t", None, 1, None, 5.0)], "gpu", [BIG_BOX], now=5.0)
    assert (report.unplaceable, report.served, report.oldest_s) == (1, False, 0.0)
    assert "no live worker serves it" in capacity_problems({"gpu": report})[0]


def test_a_queue_with_none_waiting_reports_zeros_and_no_problem():
    report = queue_capacity(0, [], "gpu", [GPU_BOX], now=5.0)
    assert (report.waiting, report.unplaceable, report.oldest_s, report.examples) == (0, 0, None, [])
    assert capacity_problems({"gpu": report}) == []


def test_health_says_per_queue_what_waits():
    lines = capacity_lines(
        {
            "cpu": {"waiting": 0, "unplaceable": 0, "oldest_s": None, "examples": []},
            "gpu": {
                "waiting": 3,
                "unplaceable": 1,
                "oldest_s": 125.0,
                "examples": ["r1/train asks 4 GPU (unplaceable)"],
            },
        }
    )
    assert lines == [
        "capacity gpu: 3 waiting for GPUs or memory (1 unplaceable), oldest 2m5s: r1/train asks 4 GPU (unplaceable)"
    ]


# -- status: a waiting stage's state -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, shown",
    [
        ({"state": "queued", "waiting": None}, "queued"),
        ({"state": "queued", "waiting": {"label": "pool llm 4/4", "items": None}}, "waiting (pool llm 4/4)"),
        (
            {"state": "queued", "waiting": {"label": "capacity gpu: needs 2 GPU", "items": None}},
            "waiting (capacity gpu: needs 2 GPU)",
        ),
        (
            {"state": "running", "waiting": {"label": "pool llm 4/4", "items": 2}},
            "running (2 items waiting: pool llm 4/4)",
        ),
        (
            {"state": "running", "waiting": {"label": "key deploy-prod 1/1", "items": 1}},
            "running (1 item waiting: key deploy-prod 1/1)",
        ),
        ({"state": "succeeded"}, "succeeded"),
    ],
)
def test_a_waiting_stage_shows_what_it_waits_for(stage, shown):
    assert state_label(stage) == shown
