"""The time a run has left and a plan's makespan, from estimates: the critical path of what is
left, running stages' progress, fan-out items as fractions, pools and rates."""

from __future__ import annotations

import pytest

from orchestration.cli import eta
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data


def graph_of(*stages: dict, **fields):
    return resolve(validate_data({"name": "p", "stages": list(stages), **fields}))


DIAMOND = graph_of(
    {"id": "a", "uses": "noop", "estimate": "2s"},
    {"id": "b", "uses": "noop", "needs": ["a"], "estimate": "5s"},
    {"id": "c", "uses": "noop", "needs": ["a"], "estimate": "1s"},
    {"id": "d", "uses": "noop", "needs": ["b", "c"], "estimate": "3s"},
)


def status(**states) -> dict:
    return {"status": "running", "stages": {sid: {"state": "pending"} for sid in "abcd"} | states}


def test_before_anything_runs_the_time_left_is_the_critical_path():
    assert eta.remaining_s(DIAMOND, status(), {}, now=100.0) == pytest.approx(10.0)


def test_history_estimates_replace_the_files():
    assert eta.remaining_s(DIAMOND, status(), {"b": 1.0}, now=100.0) == pytest.approx(6.0)


def test_a_running_stage_counts_down_with_the_time_it_has_run():
    running = status(
        a={"state": "succeeded"}, b={"state": "running", "started_at": 100.0}, c={"state": "succeeded"}
    )
    assert eta.remaining_s(DIAMOND, running, {}, now=102.0) == pytest.approx(3.0 + 3.0)
    # past its estimate it has nothing left, but what follows still does
    assert eta.remaining_s(DIAMOND, running, {}, now=110.0) == pytest.approx(3.0)


def test_a_fan_out_counts_its_items_done_as_fractions():
    fan = status(
        a={"state": "succeeded"},
        b={"state": "running", "started_at": 100.0, "items_total": 4, "items_done": 3},
    )
    assert eta.remaining_s(DIAMOND, fan, {}, now=100.5) == pytest.approx(5.0 / 4 + 3.0)


def test_a_stage_own_progress_wins_over_time():
    own = status(
        a={"state": "succeeded"},
        b={"state": "running", "started_at": 100.0, "progress": {"done": 1, "total": 5}},
    )
    assert eta.remaining_s(DIAMOND, own, {}, now=104.0) == pytest.approx(4.0 + 3.0)


def test_an_ended_run_has_nothing_left():
    ended = status(**{sid: {"state": "succeeded"} for sid in "abcd"})
    assert eta.remaining_s(DIAMOND, ended, {}, now=100.0) is None


def test_a_pool_of_one_runs_its_stages_one_after_another():
    stages = [{"id": f"s{i}", "uses": "noop", "estimate": "2s", "pool": "db"} for i in range(3)]
    graph = graph_of(*stages, pools={"db": 1})
    assert graph.makespan_s == pytest.approx(2.0)  # the critical path ignores the pool
    assert eta.makespan_s(graph, eta.limits_of(graph)) == pytest.approx(6.0)


def test_max_parallel_limits_a_wide_run():
    stages = [{"id": f"s{i}", "uses": "noop", "estimate": "1s"} for i in range(6)]
    graph = graph_of(*stages, max_parallel=2)
    assert eta.makespan_s(graph, eta.limits_of(graph)) == pytest.approx(3.0)


def test_a_rate_spaces_the_starts_of_its_stages():
    stages = [{"id": f"s{i}", "uses": "vendor.call", "estimate": "0.1s"} for i in range(3)]
    graph = graph_of(*stages, rate_limits={"vendor.call": "1/s"})
    assert eta.makespan_s(graph, eta.limits_of(graph)) == pytest.approx(2.1)


def test_part_done_reads_progress_then_items():
    assert eta.part_done({"progress": {"done": 2, "total": 8}, "items_total": 2, "items_done": 2}) == 0.25
    assert eta.part_done({"items_total": 4, "items_done": 1}) == 0.25
    assert eta.part_done({"progress": {"done": 1, "total": 0}}) is None
    assert eta.part_done({}) is None
