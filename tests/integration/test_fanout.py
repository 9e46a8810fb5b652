"""A large fan-out keeps item order and its concurrency limit."""

from __future__ import annotations

from .conftest import pipeline


def test_thousand_items_with_max_concurrency_50(bare_cluster):
    cluster = bare_cluster
    # 80 threads: enough capacity that only max_concurrency can hold the peak at 50
    cluster.start_worker(concurrency=80, pool="threads", hostname="wide")
    result = cluster.run(
        pipeline(
            "fan-out",
            {"id": "items", "uses": "noop", "params": {"output": list(range(1000))}},
            {
                "id": "each",
                "uses": "test.record",
                "needs": ["items"],
                "for_each": "items",
                "max_concurrency": 50,
                "params": {"seconds": 0.3, "name": "item"},
            },
            {"id": "total", "uses": "noop", "needs": ["each"], "params": {"output": "done"}},
        ),
        timeout=180,
    )
    assert result.status == "succeeded"
    assert result.outputs["each"] == list(range(1000))
    peak = int(cluster.redis.get(f"test:peak:{result.run_id}:item:max"))
    assert peak <= 50
    assert peak >= 25, f"the window was not used (peak {peak})"
    assert result.stage_results["each"]["items_done"] == 1000


def test_context_and_metrics_from_two_workers(bare_cluster):
    cluster = bare_cluster
    cluster.start_worker(queues=("highmem",), concurrency=1, hostname="mem-host")
    result = cluster.run(
        pipeline(
            "shared",
            {
                "id": "w1",
                "uses": "test.context_writer",
                "queue": "cpu",
                "params": {"key": "from_cpu", "value": [1, 2], "amount": 10},
            },
            {
                "id": "w2",
                "uses": "test.context_writer",
                "queue": "highmem",
                "params": {"key": "from_mem", "value": {"a": 1}, "amount": 5},
            },
            {
                "id": "read",
                "uses": "test.context_reader",
                "needs": ["w1", "w2"],
                "params": {"keys": ["from_cpu", "from_mem", "writers"]},
            },
        )
    )
    assert result.status == "succeeded"
    hosts = {result.stage_results["w1"]["host"], result.stage_results["w2"]["host"]}
    assert hosts == {"wide", "mem-host"}
    assert result.outputs["read"] == {"from_cpu": [1, 2], "from_mem": {"a": 1}, "writers": 2}
    assert result.metrics == {"rows": 15}
    assert result.context == {"from_cpu": [1, 2], "from_mem": {"a": 1}, "writers": 2}
