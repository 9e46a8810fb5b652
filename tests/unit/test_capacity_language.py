"""Capacity and fleet-wide limits in the pipeline language: pools, rate limits, concurrency keys,
max_parallel, the `inputs` alias; their checks, their resolution into the run graph, and the
settings that declare them too (CHORDFLOW_POOLS, CHORDFLOW_RATE_LIMITS)."""

from __future__ import annotations

import json
import textwrap

import pytest

from orchestration.errors import InvalidPipeline
from orchestration.graph.resolve import RunGraph, resolve
from orchestration.language.builder import Pipeline, to_yaml
from orchestration.language.rates import (
    PoolLimit,
    RateLimit,
    fill_key,
    parse_rate,
    pool_limit,
    settings_limits,
    tighter_pool,
    tighter_rate,
)
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import load_pipeline_text, validate_data
from orchestration.settings import Settings

PLAIN = Settings()

FILE = """\
name: capacity
variables: {app: web}
pools:
  llm: 4
  vendor: {size: 2, rate_limit: "10/s"}
rate_limits: {vendor.call: 5/s, unused.type: 2/h}
max_parallel: 3
stages:
  - id: fetch
    uses: vendor.call
    pool: vendor
    params: {env: prod}
    concurrency_key: "deploy-${app}-${params.env}"
  - id: summarize
    uses: noop
    inputs: fetch
    pool: llm
  - id: plain
    uses: noop
"""


def load(text: str, settings: Settings = PLAIN, **kwargs) -> PipelineSpec:
    return load_pipeline_text(textwrap.dedent(text), "p.yaml", env=kwargs.pop("env", {}), settings=settings)


def problems(text: str, settings: Settings = PLAIN) -> list[str]:
    with pytest.raises(InvalidPipeline) as caught:
        load(text, settings)
    return [str(p) for p in caught.value.problems]


def one_stage(**fields: object) -> str:
    """A file of one stage with `fields` (JSON is YAML)."""
    return json.dumps({"name": "p", "stages": [{"id": "s", "uses": "noop", **fields}]})


# -- rates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, count, per_s, shown",
    [
        ("5/s", 5, 1, "5/s"),
        (" 5 / sec ", 5, 1, "5/s"),
        ("1/second", 1, 1, "1/s"),
        ("100/m", 100, 60, "100/min"),
        ("100/min", 100, 60, "100/min"),
        ("3/minute", 3, 60, "3/min"),
        ("2/h", 2, 3600, "2/h"),
        ("7/hour", 7, 3600, "7/h"),
        ("1000000/s", 1_000_000, 1, "1000000/s"),
    ],
)
def test_rates_are_read_in_every_accepted_form(text, count, per_s, shown):
    rate = parse_rate(text)
    assert (rate.count, rate.per_s, rate.text) == (count, per_s, shown)
    assert rate.interval_ms == pytest.approx(per_s * 1000 / count)


@pytest.mark.parametrize(
    "text", ["5", "5/d", "0/s", "-1/s", "1.5/s", "1000001/s", "s/5", "", "5/s/s", 5, None]
)
def test_anything_else_is_not_a_rate_and_the_message_names_the_forms(text):
    with pytest.raises(ValueError, match="is not a rate"):
        parse_rate(text)
    with pytest.raises(ValueError, match=r"N/s, N/min or N/h|1-1,000,000"):
        parse_rate(text)


def test_a_rate_is_written_as_its_text_and_read_back():
    rate = parse_rate("100/min")
    assert rate.model_dump() == "100/min" and rate.model_dump_json() == '"100/min"'
    assert RateLimit.model_validate("100/min") == rate
    assert RateLimit.model_validate({"count": 100, "per_s": 60}) == rate
    with pytest.raises(ValueError, match="per_s must be 1, 60 or 3600"):
        RateLimit.model_validate({"count": 1, "per_s": 7})


def test_pools_from_a_size_or_a_mapping():
    assert pool_limit(4) == PoolLimit(size=4)
    both = pool_limit({"size": 2, "rate_limit": "10/s"})
    assert both.size == 2 and both.rate == parse_rate("10/s")
    assert pool_limit({"rate_limit": "1/h"}).size is None
    assert both.model_dump() == {"size": 2, "rate_limit": "10/s"}
    assert PoolLimit.model_validate_json(both.model_dump_json()) == both


@pytest.mark.parametrize(
    "value, message",
    [
        (True, "is not a pool"),
        ("4", "is not a pool"),
        (2.0, "is not a pool"),
        ({}, "a pool needs a size, a rate_limit, or both"),
        ({"size": 0}, "size: Input should be greater than or equal to 1"),
        ({"size": True}, "size must be a whole number >= 1, got true"),
        ({"rate_limit": "5/d"}, "rate_limit: '5/d' is not a rate"),
        ({"sz": 1}, "sz: Extra inputs are not permitted"),
    ],
)
def test_a_bad_pool_is_refused(value, message):
    with pytest.raises(ValueError, match=message):
        pool_limit(value)


def test_the_tighter_limit_wins_field_by_field():
    fast, slow = parse_rate("10/s"), parse_rate("100/min")
    assert tighter_rate(fast, slow) is slow and tighter_rate(slow, fast) is slow
    assert tighter_rate(None, fast) is fast and tighter_rate(fast, None) is fast
    assert tighter_rate(None, None) is None
    a, b = PoolLimit(size=4, rate_limit=fast), PoolLimit(size=2)
    assert tighter_pool(a, b) == PoolLimit(size=2, rate_limit=fast)
    assert tighter_pool(b, PoolLimit(size=8, rate_limit=slow)) == PoolLimit(size=2, rate_limit=slow)
    assert tighter_pool(a, None) is a and tighter_pool(None, b) is b and tighter_pool(None, None) is None


def test_settings_limits_parse_the_environment(monkeypatch):
    monkeypatch.setenv("CHORDFLOW_POOLS", '{"llm": 4, "vendor": {"size": 2, "rate_limit": "10/s"}}')
    monkeypatch.setenv("CHORDFLOW_RATE_LIMITS", '{"vendor.call": "5/s"}')
    pools, rates = settings_limits(Settings())
    assert pools == {"llm": PoolLimit(size=4), "vendor": PoolLimit(size=2, rate_limit="10/s")}
    assert rates == {"vendor.call": parse_rate("5/s")}
    assert settings_limits(PLAIN) == ({}, {})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"pools": {"llm": 0}}, "CHORDFLOW_POOLS: pool 'llm': size"),
        ({"pools": {"-x": 1}}, "CHORDFLOW_POOLS: pool '-x': pool name"),
        (
            {"pools": {"v": {"rate_limit": "fast"}}},
            "CHORDFLOW_POOLS: pool 'v': rate_limit: 'fast' is not a rate",
        ),
        ({"rate_limits": {"t": "5/d"}}, "CHORDFLOW_RATE_LIMITS: stage type 't': '5/d' is not a rate"),
        ({"rate_limits": {"bad name": "5/s"}}, "CHORDFLOW_RATE_LIMITS: stage type 'bad name'"),
    ],
)
def test_bad_limit_settings_name_the_setting_and_the_entry(fields, message):
    with pytest.raises(ValueError, match=message):
        settings_limits(Settings(**fields))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("CHORDFLOW_POOLS", "{llm", "CHORDFLOW_POOLS must be a JSON mapping"),
        ("CHORDFLOW_POOLS", "[1]", "CHORDFLOW_POOLS must be a mapping"),
        ("CHORDFLOW_POOLS", '{"llm": true}', "CHORDFLOW_POOLS: 'llm' must be a size"),
        ("CHORDFLOW_RATE_LIMITS", '{"t": 5}', "CHORDFLOW_RATE_LIMITS: 't' must be a rate"),
    ],
)
def test_settings_refuse_a_limit_of_the_wrong_shape(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings()


# -- the file ---------------------------------------------------------------------------------------


def test_a_file_with_every_limit_loads():
    spec = load(FILE)
    assert spec.pools == {"llm": PoolLimit(size=4), "vendor": PoolLimit(size=2, rate_limit="10/s")}
    assert spec.rate_limits == {"vendor.call": parse_rate("5/s"), "unused.type": parse_rate("2/h")}
    assert spec.max_parallel == 3
    fetch = spec.stage("fetch")
    assert fetch.pool == "vendor"
    # ${app} is a variable, filled in at once; ${params.env} is left for resolve
    assert fetch.concurrency_key == "deploy-web-${params.env}"
    assert spec.stage("summarize").needs == ("fetch",)


def test_inputs_is_another_name_for_needs():
    spec = load("name: p\nstages:\n  - {id: a, uses: noop}\n  - {id: b, uses: noop, inputs: [a]}\n")
    assert spec.stage("b").needs == ("a",)
    found = problems(
        """\
        name: p
        stages:
          - {id: a, uses: noop}
          - {id: b, uses: noop, needs: [a], inputs: [a]}
          - {id: c, uses: noop, inputs: [ghost]}
        """
    )
    assert found == [
        "p.yaml:4: stage 'b': give either 'needs' or 'inputs', not both",
        "p.yaml:5: stage 'c': needs 'ghost', which is not a stage in this pipeline",
    ]


def test_a_pool_must_be_declared_in_the_file_or_the_settings():
    text = one_stage(pool="llm")
    assert problems(text) == [
        "p.yaml:1: stage 's': pool 'llm' is not declared (add it under pools: at the top of the file, or "
        + "CHORDFLOW_POOLS)"
    ]
    assert load(text, Settings(pools={"llm": 2})).stage("s").pool == "llm"


@pytest.mark.parametrize(
    "top, message",
    [
        ({"pools": {"llm": 0}}, "pools.llm: Input should be greater than or equal to 1"),
        ({"pools": {"llm": True}}, "pools.llm: true is not a pool"),
        ({"pools": {"v": {"size": 1, "rate_limit": "9/d"}}}, "pools.v.rate_limit: '9/d' is not a rate"),
        ({"pools": {"v": {}}}, "pools.v: a pool needs a size, a rate_limit, or both"),
        ({"pools": {".x": 1}}, "pools: pool name '.x' must be 1-128 letters"),
        ({"pools": [1]}, "pools: Input should be a valid dictionary"),
        ({"rate_limits": {"t": 5}}, "rate_limits.t: 5 is not a rate"),
        ({"rate_limits": {"t": "5 per second"}}, "rate_limits.t: '5 per second' is not a rate"),
        ({"rate_limits": {"a b": "5/s"}}, "rate_limits: stage type name 'a b' must be"),
        ({"max_parallel": 0}, "max_parallel: Input should be greater than or equal to 1"),
        ({"max_parallel": True}, "max_parallel: Input should be a valid integer"),
        ({"max_parallel": "3"}, "max_parallel: Input should be a valid integer"),
    ],
)
def test_bad_limits_in_the_file_are_refused(top, message):
    found = problems(json.dumps({"name": "p", **top, "stages": [{"id": "s", "uses": "noop"}]}))
    assert len(found) == 1 and found[0].startswith(f"p.yaml:1: {message}"), found


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"concurrency_key": "k-${params.env}"}, "reads ${params.env}, and the stage's params have no 'env'"),
        ({"params": {"x": ""}, "concurrency_key": "${params.x}"}, "is empty once filled in"),
        ({"concurrency_key": ""}, "concurrency_key: String should have at least 1 character"),
        ({"params": {"x": "a|b"}, "concurrency_key": "k-${params.x}"}, "may not contain '|'"),
        ({"params": {"x": "a\nb"}, "concurrency_key": "k-${params.x}"}, "may not contain '|' or control"),
        ({"params": {"x": "y" * 200}, "concurrency_key": "k-${params.x}"}, "202 characters once filled in"),
        ({"concurrency_key": "${params.x y}"}, "'${params.x y}' is not a reference"),
        ({"concurrency_key": 5}, "concurrency_key: 5 is not text"),
        ({"pool": 5}, "pool: 5 is not text"),
        ({"pool": "a b"}, "pool: pool name 'a b' must be"),
        (
            {"matrix": {"lr": [1, 2]}, "concurrency_key": "k-${params.lr}"},
            "reads ${params.lr}, a matrix axis",
        ),
    ],
)
def test_bad_stage_limits_name_the_stage_and_what_is_wrong(fields, message):
    found = problems(one_stage(**fields))
    assert len(found) == 1 and found[0].startswith("p.yaml:1: stage 's': ") and message in found[0], found


def test_a_variable_in_a_key_is_filled_in_and_a_params_reference_is_kept():
    spec = load(one_stage(params={"env": "prod"}, concurrency_key="${params.env}"))
    assert spec.stage("s").concurrency_key == "${params.env}"
    spec = load(one_stage(concurrency_key="${REGION:-eu}-x"), env={"REGION": "us"})
    assert spec.stage("s").concurrency_key == "us-x"
    found = problems(one_stage(concurrency_key="${nope}"))
    assert len(found) == 1 and "${nope} is not a variable" in found[0], found
    # elsewhere, ${params.x} is still no variable name
    assert any("params.x" in p for p in problems(one_stage(params={"a": "${params.x}"})))


def test_fill_key_writes_values_as_text():
    assert fill_key("k-${params.a}-${params.b}-${params.c}", {"a": "x", "b": 2, "c": True}) == "k-x-2-true"
    assert fill_key("plain", {}) == "plain"
    with pytest.raises(ValueError, match="have no 'a'"):
        fill_key("${params.a}", {})


def test_the_schema_accepts_the_new_keys():
    from jsonschema import Draft202012Validator

    schema = PipelineSpec.model_json_schema()
    data = load(FILE).model_dump(mode="json", exclude_unset=True)
    data["stages"][1] = {**{k: v for k, v in data["stages"][1].items() if k != "needs"}, "inputs": "fetch"}
    data["pools"]["llm"] = 4
    assert list(Draft202012Validator(schema).iter_errors(data)) == []
    bad = {**data, "rate_limits": {"t": "5/d"}}
    assert list(Draft202012Validator(schema).iter_errors(bad))


def test_a_builder_writes_limits_that_read_back():
    spec = load(FILE)
    assert Pipeline.from_text(to_yaml(spec)).spec == spec
    assert validate_data(spec.model_dump(mode="json", exclude_defaults=True)) == spec


# -- resolve ----------------------------------------------------------------------------------------


def test_resolve_fills_nodes_and_keeps_only_the_limits_nodes_use():
    settings = Settings(
        pools={"llm": 2, "vendor": {"rate_limit": "20/s"}, "other": 1}, rate_limits={"noop": "100/min"}
    )
    graph = resolve(load(FILE, settings), settings)
    nodes = {n.id: n for n in graph.nodes}
    assert (nodes["fetch"].pool, nodes["fetch"].concurrency_key) == ("vendor", "deploy-web-prod")
    assert (nodes["summarize"].pool, nodes["summarize"].concurrency_key) == ("llm", None)
    assert (nodes["plain"].pool, nodes["plain"].concurrency_key) == (None, None)
    assert nodes["summarize"].needs == ("fetch",)
    # each pool the tighter of the file's and the settings' declaration, field by field
    assert graph.pools == {"vendor": PoolLimit(size=2, rate_limit="10/s"), "llm": PoolLimit(size=2)}
    # unused.type is used by no node
    assert graph.type_rates == {"vendor.call": parse_rate("5/s"), "noop": parse_rate("100/min")}
    assert graph.max_parallel == 3


def test_the_tighter_type_rate_wins_at_resolve():
    text = """\
        name: p
        pools: {p: {rate_limit: 1/s}}
        rate_limits: {noop: 10/s}
        stages: [{id: s, uses: noop, pool: p}]
        """
    settings = Settings(rate_limits={"noop": "2/s"}, pools={"p": {"rate_limit": "5/s", "size": 3}})
    graph = resolve(load(text), settings)
    assert graph.type_rates == {"noop": parse_rate("2/s")}
    assert graph.pools == {"p": PoolLimit(size=3, rate_limit="1/s")}


def test_a_graph_without_limits_has_none():
    graph = resolve(load(one_stage()), PLAIN)
    assert (graph.pools, graph.type_rates, graph.max_parallel) == ({}, {}, None)
    assert graph.nodes[0].pool is None and graph.nodes[0].concurrency_key is None


def test_resolve_refuses_what_validation_was_skipped_for():
    spec = PipelineSpec.model_validate(
        {"name": "p", "stages": [{"id": "s", "uses": "noop", "pool": "ghost"}]}
    )
    with pytest.raises(InvalidPipeline, match="pool 'ghost' is not declared"):
        resolve(spec, PLAIN)
    spec = PipelineSpec.model_validate(
        {"name": "p", "stages": [{"id": "s", "uses": "noop", "concurrency_key": "${params.x}"}]}
    )
    with pytest.raises(InvalidPipeline, match="have no 'x'"):
        resolve(spec, PLAIN)
    with pytest.raises(InvalidPipeline, match="CHORDFLOW_RATE_LIMITS"):
        resolve(load(one_stage()), Settings(rate_limits={"noop": "fast"}))


def test_the_run_graph_survives_a_json_round_trip():
    settings = Settings(pools={"llm": 2})
    graph = resolve(load(FILE, settings), settings)
    again = RunGraph.model_validate_json(graph.model_dump_json(exclude_defaults=True))
    assert again.pools == graph.pools and again.type_rates == graph.type_rates
    assert again.max_parallel == 3 and again.nodes == graph.nodes
    stored = json.loads(graph.model_dump_json(exclude_defaults=True))
    assert stored["type_rates"] == {"vendor.call": "5/s"}
    assert stored["pools"]["vendor"] == {"size": 2, "rate_limit": "10/s"}


def test_a_graph_stored_before_limits_still_loads():
    old = {"name": "p", "version": "0", "nodes": [{"id": "s", "type": "noop", "queue": "cpu"}]}
    graph = RunGraph.model_validate_json(json.dumps(old))
    assert (graph.pools, graph.type_rates, graph.max_parallel) == ({}, {}, None)
    assert graph.nodes[0].pool is None and graph.nodes[0].concurrency_key is None


def test_a_settings_limit_is_a_validation_problem():
    found = problems(one_stage(), Settings(pools={"llm": 0}))
    assert len(found) == 1 and found[0].startswith("p.yaml: CHORDFLOW_POOLS: pool 'llm': size"), found
