"""The Python API: build a pipeline in code, submit it, wait for its result."""

from __future__ import annotations

import pytest

from orchestration import Pipeline


@pytest.fixture(scope="module")
def cluster(bare_cluster):
    """One worker with a GPU (its `embed` stage asks for one: a worker without would never admit it)."""
    bare_cluster.start_worker(concurrency=3, hostname="api-host", gpus=1, wait=False)
    bare_cluster.wait_workers(2, hostnames=["api-host"])  # api-host/main and api-host/gpu
    return bare_cluster


def test_builder_submit_and_wait(cluster):
    p = (
        Pipeline("docs")
        .add("ingest", "noop", params={"output": ["a.pdf", "b.pdf", "c.pdf"]})
        .add("nums", "noop", params={"output": [1, 2, 3]})
        .add("parse", "test.square", needs=["ingest", "nums"], for_each="nums")
        .add("count", "test.context_writer", needs=["ingest"], params={"key": "docs", "value": 3})
        .add("embed", "noop", needs=["parse", "count"], resources={"gpu": 1})
        .add("skip", "noop", when="false")
    )
    assert Pipeline.from_text(p.to_yaml()).spec == p.spec
    run = p.submit(settings=cluster.settings)
    result = run.wait(timeout=60)
    assert result.success and result.status == "succeeded"
    assert result.outputs["parse"] == [1, 4, 9]
    assert result.outputs["ingest"] == ["a.pdf", "b.pdf", "c.pdf"]
    assert result.skipped == ["skip"] and result.failed == []
    assert result.metrics == {"rows": 1}
    assert result.context == {"docs": 3, "writers": 1}
    assert result.stage_results["embed"]["queue"] == "gpu"
    assert result.duration > 0
    assert run.status()["status"] == "succeeded"


def test_a_waiting_client_is_woken_by_the_end_not_by_every_stage(cluster):
    """`wait()` reads the run's own changes (Keys.run_ends), not its event stream: a 40-stage chain
    wakes it a few times (its one-second ticks and the end), not twice per stage."""
    p = Pipeline("woken")
    for i in range(40):
        p.add(f"s{i}", "noop", needs=[f"s{i - 1}"] if i else None)
    run = p.submit(settings=cluster.settings)

    def xreads() -> int:
        return int(cluster.redis.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))

    before = xreads()
    result = run.wait(timeout=60)
    woken = xreads() - before
    assert result.status == "succeeded"
    assert woken <= 2 + int(result.duration) * 2, woken  # was about 80: one read per stage event
