"""Fallbacks as a user expects them: a fallback type runs with its own params, its own failure is
shown with the stage's error, and `last_success` with no earlier success fails the stage clearly
unless it has a default. Real redis-server, real workers."""

from __future__ import annotations

import pytest

from orchestration.errors import InvalidPipeline
from orchestration.language.validation import validate_data
from orchestration.states import RunStatus, State

from .conftest import pipeline

ALWAYS = {"times": -1, "message": "primary down", "output": "primary's"}


def _stage(result):
    return result.stage_results["s"]


def test_a_fallback_type_runs_with_its_own_params(cluster):
    result = cluster.run(
        pipeline(
            "fb-params",
            {
                "id": "s",
                "uses": "fail",
                "params": ALWAYS,
                "fallback": {"uses": "noop", "params": {"output": "fb"}},
            },
        )
    )
    assert result.status == RunStatus.SUCCEEDED
    assert (
        _stage(result)["state"] == State.FALLBACK
        and cluster.client.store.runs.output(result.run_id, "s") == "fb"
    )


def test_a_fallback_s_own_failure_is_shown_with_the_stage_s_error(cluster):
    result = cluster.run(
        pipeline(
            "fb-fails",
            {
                "id": "s",
                "uses": "fail",
                "params": ALWAYS,
                "fallback": {"uses": "fail", "params": {"times": -1, "message": "fallback down too"}},
            },
        )
    )
    assert result.status == RunStatus.FAILED
    error = cluster.client.status(result.run_id)["stages"]["s"]["error"]
    assert "primary down" in error["message"] and "fallback down too" in error["message"]


def test_last_success_with_no_earlier_success_fails_clearly(cluster):
    result = cluster.run(
        pipeline("fb-never", {"id": "s", "uses": "fail", "params": ALWAYS, "fallback": "last_success"})
    )
    assert result.status == RunStatus.FAILED
    error = cluster.client.status(result.run_id)["stages"]["s"]["error"]
    assert "no earlier run of pipeline 'fb-never' has an output of stage 's'" in error["message"]


def test_last_success_with_a_default(cluster):
    result = cluster.run(
        pipeline(
            "fb-default",
            {"id": "s", "uses": "fail", "params": ALWAYS, "fallback": {"last_success": True, "default": []}},
        )
    )
    assert result.status == RunStatus.SUCCEEDED
    assert cluster.client.store.runs.output(result.run_id, "s") == []


@pytest.mark.parametrize(
    ("fallback", "why"),
    [
        ({"output": 1, "params": {}}, "params go with {uses: TYPE}"),
        ({"uses": "noop", "default": 1}, "default goes with {last_success: true}"),
    ],
)
def test_misplaced_fallback_fields_are_refused(fallback, why):
    with pytest.raises(InvalidPipeline, match=why):
        validate_data(pipeline("fb-bad", {"id": "s", "uses": "noop", "fallback": fallback}))
