"""Run history for plan's makespan estimate: durations from stage records, medians, and their use."""

from __future__ import annotations

import pytest

from orchestration.fleet.history import estimates, median_durations, stage_seconds
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data
from orchestration.settings import Settings


def record(started: float, finished: float) -> dict[str, str]:
    return {"started_at": f"{started:.3f}", "finished_at": f"{finished:.3f}", "state": "succeeded"}


def test_a_stage_duration_is_finished_minus_started():
    assert stage_seconds(record(100.0, 102.5)) == pytest.approx(2.5)


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"started_at": "100.0"},
        {"finished_at": "100.0"},
        {"started_at": "x", "finished_at": "1"},
        {"started_at": "105", "finished_at": "100"},
        {"started_at": "0", "finished_at": "inf"},
        {"started_at": "nan", "finished_at": "1"},
    ],
)
def test_records_without_a_sound_start_and_finish_have_no_duration(broken):
    assert stage_seconds(broken) is None


def test_durations_are_medians_per_stage_ignoring_unusable_records():
    records = [
        ("fetch", record(0, 10)),
        ("fetch", record(0, 30)),
        ("fetch", record(0, 11)),
        ("train", record(0, 100)),
        ("train", record(0, 200)),
        ("train", {"started_at": "5"}),  # never finished: ignored
        ("report", {}),  # no times at all: no estimate
    ]
    assert median_durations(records) == {"fetch": 11.0, "train": 150.0}


def test_no_history_gives_no_estimates():
    assert median_durations([]) == {}
    assert estimates(Settings(redis_url=None), "anything") == {}


def test_history_estimates_drive_the_critical_path_and_makespan():
    spec = validate_data(
        {
            "name": "diamond",
            "stages": [
                {"id": "start", "uses": "noop"},
                {"id": "left", "uses": "noop", "needs": ["start"]},
                {"id": "right", "uses": "noop", "needs": ["start"]},
                {"id": "join", "uses": "noop", "needs": ["left", "right"]},
            ],
        }
    )
    # Without history every stage counts 1s and the tie goes either way
    assert resolve(spec).makespan_s == pytest.approx(3.0)
    # With history, the slow branch is the critical path and sets the makespan
    graph = resolve(spec, estimates={"start": 2.0, "left": 1.0, "right": 30.0, "join": 0.5})
    assert graph.critical_path == ("start", "right", "join")
    assert graph.makespan_s == pytest.approx(32.5)
    # A stage with no history keeps its default
    assert resolve(spec, estimates={"right": 30.0}).makespan_s == pytest.approx(32.0)


def test_a_recorded_duration_of_zero_is_an_estimate_not_a_missing_one():
    # a stage faster than the clock's millisecond has a recorded duration of 0.0
    spec = validate_data(
        {
            "name": "quick",
            "stages": [{"id": "a", "uses": "noop"}, {"id": "b", "uses": "noop", "needs": ["a"]}],
        }
    )
    graph = resolve(spec, estimates={"a": 0.0, "b": 0.25})
    assert graph.makespan_s == 0.25
