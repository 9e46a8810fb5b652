"""The rules of pipelines that depend on pipelines, without Redis: when a dependency or a required
asset is met and what is said when it is not, ages, trigger keys, cycles among registered
pipelines, the order of a chain, the picture of pipelines and assets, and that every run's end
reaches the hooks outbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.engine import hooks, triggers
from orchestration.engine.dependencies import (
    PipelineState,
    Registered,
    RunEnd,
    asset_freshness_limit,
    asset_problem,
    dependency_limit,
    dependency_problem,
    freshness_limit,
    run_extra,
    span,
    trigger_key,
)
from orchestration.fleet.registry import chain_order, cycles
from orchestration.graph import pipeline_map
from orchestration.language.ids import check_idempotency_key
from orchestration.language.validation import load_pipeline, validate_data

NOW = 1_000_000.0
HOUR = 3600.0
CHAIN = Path(__file__).resolve().parents[2] / "examples" / "chain"
FOUR = ["data-daily", "scenarios-weekly", "metrics-weekly", "assessment-weekly"]


def spec(name: str, **fields):
    return validate_data({"name": name, **fields, "stages": [{"id": "s", "uses": "noop"}]})


def four() -> dict:
    return {name: load_pipeline(CHAIN / f"{name}.yaml") for name in FOUR}


def state(*ends: RunEnd, newest: RunEnd | None = None, reason: str | None = None) -> PipelineState:
    finished = [e for e in ends if e.status in ("succeeded", "failed", "cancelled")]
    successes = [e for e in ends if e.status == "succeeded"]
    return PipelineState(
        "up",
        last_run=newest or (max(ends, key=lambda e: e.at) if ends else None),
        last_reason=reason,
        last_finished=max(finished, key=lambda e: e.at) if finished else None,
        last_success=max(successes, key=lambda e: e.at) if successes else None,
    )


# -- a dependency -----------------------------------------------------------------------------------


def test_a_dependency_that_never_ran_is_not_met():
    assert dependency_problem(state(), None, NOW) == "never ran"
    running = RunEnd("r1", "running", NOW - 120)
    assert dependency_problem(state(newest=running), None, NOW) == (
        "has not finished a run yet (one is running, submitted 2 m ago)"
    )
    skipped = RunEnd("r2", "skipped", NOW - 60)
    assert dependency_problem(state(newest=skipped, reason="its own"), None, NOW) == (
        "never ran: its last run was skipped 1 m ago (its own)"
    )


def test_a_dependency_whose_last_run_failed_is_not_met_even_after_an_older_success():
    ends = (RunEnd("r1", "succeeded", NOW - 3 * HOUR), RunEnd("r2", "failed", NOW - HOUR))
    assert (
        dependency_problem(state(*ends), 26 * HOUR, NOW)
        == "last run failed 1 h ago (r2); last success 3 h ago"
    )
    assert dependency_problem(state(RunEnd("r3", "cancelled", NOW - 5)), None, NOW) == (
        "last run cancelled 5 s ago (r3); it never succeeded"
    )


def test_a_dependency_met_within_max_age_and_not_after():
    ok = state(RunEnd("r1", "succeeded", NOW - 25 * HOUR))
    assert dependency_problem(ok, 26 * HOUR, NOW) is None
    assert dependency_problem(ok, None, NOW) is None  # no max_age: any success
    old = state(RunEnd("r1", "succeeded", NOW - 31 * HOUR))
    assert dependency_problem(old, 26 * HOUR, NOW) == "last success 31 h ago, older than 26 h"


def test_a_running_newer_run_does_not_hide_the_last_success():
    ends = (RunEnd("r1", "succeeded", NOW - HOUR),)
    assert dependency_problem(state(*ends, newest=RunEnd("r2", "running", NOW)), 2 * HOUR, NOW) is None


def test_max_age_comes_from_the_dependency_else_the_registered_upstream():
    registered = {"up": Registered("up", spec("up", max_age="2h"))}
    assert dependency_limit("up", 60.0, registered) == 60.0
    assert dependency_limit("up", None, registered) == 2 * HOUR
    assert dependency_limit("elsewhere", None, registered) is None


# -- an asset ---------------------------------------------------------------------------------------


def test_an_asset_must_have_been_provided_recently_enough():
    assert asset_problem(None, None, ["maker"], NOW) == "never provided (provided by maker)"
    assert asset_problem(None, None, [], NOW) == "never provided (no registered pipeline provides it)"
    made = RunEnd("r1", "succeeded", NOW - 30 * HOUR, "maker")
    assert asset_problem(made, None, ["maker"], NOW) is None
    assert asset_problem(made, 26 * HOUR, ["maker"], NOW) == (
        "last provided 30 h ago by maker (r1), older than 26 h"
    )


def test_freshness_limits_are_the_smallest_max_age_that_applies():
    registered = {name: Registered(name, s) for name, s in four().items()}
    assert freshness_limit("data-daily", registered) == 26 * HOUR  # own 26h, scenarios' depends_on 26h
    assert freshness_limit("scenarios-weekly", registered) == 8 * 24 * HOUR
    assert asset_freshness_limit("market_data", registered) == 26 * HOUR
    assert freshness_limit("unknown", registered) is None


# -- words, keys, records ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0 s"), (59.9, "59 s"), (60, "1 m"), (90, "90 s"), (600, "10 m"), (3600, "1 h"), (5400, "90 m")]
    + [(26 * HOUR, "26 h"), (31.9 * HOUR, "31 h"), (3 * 86400, "3 d"), (-5, "0 s")],
)
def test_ages_read_in_whole_units(seconds, text):
    assert span(seconds) == text


def test_a_trigger_key_is_one_per_pipeline_and_upstream_run_and_always_a_valid_key():
    assert trigger_key("scenarios-weekly", "r1a2b") == "trigger:scenarios-weekly:r1a2b"
    odd = trigger_key("weekly scenarios (v2)", "r1a2b")
    assert check_idempotency_key(odd) == odd and odd != trigger_key("weekly scenarios (v3)", "r1a2b")


def test_a_run_records_where_it_came_from():
    s = spec("p", max_age="1h", provides=["x"])
    assert run_extra(s) == {"max_age_s": 3600.0, "provides": '["x"]'}
    forced = run_extra(
        s, forced=True, unmet_lines=["up: never ran"], triggered_by="r1", triggered_by_pipeline="up"
    )
    assert forced["forced"] == 1 and forced["unmet"] == '["up: never ran"]'
    assert forced["triggered_by"] == "r1" and forced["triggered_by_pipeline"] == "up"


# -- the registry's links ------------------------------------------------------------------------------


def test_a_chain_is_ordered_by_its_links_whatever_order_it_is_named_in():
    specs = four()
    assert chain_order({n: specs[n] for n in reversed(FOUR)}) == FOUR


def test_cycles_among_pipelines_are_found_through_every_kind_of_link():
    assert cycles(four()) == []
    by_trigger = {
        "a": spec("a", triggers=[{"on_success_of": "b"}]),
        "b": spec("b", triggers=[{"on_success_of": "a"}]),
    }
    assert cycles(by_trigger) == ["a → b → a"]
    by_asset = {
        "a": spec("a", provides=["x"], requires=["y"]),
        "b": spec("b", provides=["y"], requires=["x"]),
    }
    assert cycles(by_asset) == ["a → b → a"]
    mixed = {"a": spec("a", depends_on=["b"]), "b": spec("b", triggers=[{"on_success_of": "a"}])}
    assert len(cycles(mixed)) == 1


# -- the picture -------------------------------------------------------------------------------------


def test_the_graph_draws_pipelines_assets_and_each_kind_of_link():
    specs = four()
    mermaid = pipeline_map.to_mermaid(specs, {"data-daily": "stale"})
    dot = pipeline_map.to_dot(specs, {"data-daily": "stale"})
    for name in FOUR + ["market_data", "scenario_definitions", "technical_indicators", "backtest_results"]:
        assert name in mermaid and name in dot
    assert '[("market_data")]' in mermaid and "shape=cylinder" in dot
    assert '-.->|"on success"|' in mermaid and "style=dashed" in dot
    assert '-->|"depends_on ≤ 26h"|' in mermaid
    assert "classDef stale" in mermaid and 'fillcolor="#f1aeb5"' in dot


def test_the_graph_escapes_names_and_marks_pipelines_nobody_registered():
    specs = {"x": spec("x", depends_on=['evil"];<b>'])}
    mermaid, dot = pipeline_map.to_mermaid(specs), pipeline_map.to_dot(specs)
    assert 'evil"' not in mermaid and "<b>" not in mermaid and "evil#34;#93;#59;#60;b#62;" in mermaid
    assert "(not registered)" in mermaid and 'style="rounded,dashed"' in dot
    assert 'evil\\"];<b>' in dot


# -- every run's end reaches the hooks outbox ------------------------------------------------------


def test_the_hook_sender_listens_for_every_run_end_without_a_hook_of_its_own():
    triggers.announce_run_ends()
    triggers.announce_run_ends()  # once, however many senders
    listening = [fn for fn in hooks.registered("run_complete") if triggers.is_internal(fn)]
    assert len(listening) == 1
    assert hooks.entry("run_complete", {"run_id": "r1"}, []) is not None
    assert hooks.entry("stage_start", {"run_id": "r1"}, []) is None  # nothing per stage
