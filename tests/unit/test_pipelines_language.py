"""The pipeline file's links to other pipelines: `depends_on`, `requires`, `provides`, `triggers`:
their models, validation, JSON Schema, the examples of examples/chain, and what the docs say."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from orchestration.cli._common import report_error
from orchestration.cli.main import cli
from orchestration.errors import DependenciesNotMet, InvalidPipeline
from orchestration.language.builder import dump
from orchestration.language.loader import load_document
from orchestration.language.validation import load_pipeline, load_pipeline_text, validate_data

REPO = Path(__file__).resolve().parents[2]
CHAIN = sorted((REPO / "examples" / "chain").glob("*.yaml"))
DOC = (REPO / "docs" / "pipeline-file.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")
FOUR = ["data-daily", "scenarios-weekly", "metrics-weekly", "assessment-weekly"]

SCENARIOS = """\
name: scenarios-weekly
depends_on:
  - {pipeline: data-daily, max_age: 26h}
  - prices
requires: [market_data, {asset: calendar, max_age: 1d}]
provides: [scenario_definitions]
triggers:
  - {on_success_of: data-daily}
stages:
  - {id: build, uses: noop}
"""


def test_the_four_fields_read_with_their_shorthands():
    spec = load_pipeline_text(SCENARIOS)
    assert [(d.pipeline, d.max_age) for d in spec.depends_on] == [
        ("data-daily", 26 * 3600.0),
        ("prices", None),
    ]
    assert [(r.asset, r.max_age) for r in spec.requires] == [("market_data", None), ("calendar", 86400.0)]
    assert spec.provides == ("scenario_definitions",)
    assert [t.on_success_of for t in spec.triggers] == ["data-daily"]
    assert validate_data(dump(spec)) == spec  # file -> model -> file -> model


def test_every_link_problem_is_reported_at_once_with_its_line():
    text = """\
name: loop
depends_on:
  - {pipeline: loop}
  - other
  - other
requires: [made_here]
provides: [made_here, "not an asset"]
triggers:
  - {on_success_of: loop}
stages:
  - {id: s, uses: noop, timeout: 5 parsecs}
"""
    with pytest.raises(InvalidPipeline) as raised:
        load_pipeline_text(text, source="loop.yaml")
    lines = [str(p) for p in raised.value.problems]
    assert "loop.yaml:3: depends_on: 'loop' is this pipeline itself" in lines
    assert "loop.yaml:5: depends_on: 'other' is given twice" in lines
    assert "loop.yaml:6: requires: 'made_here' is an asset this pipeline provides itself" in lines
    assert any(line.startswith("loop.yaml:7: provides: asset name 'not an asset'") for line in lines)
    assert any(
        line.startswith("loop.yaml:9: triggers: on_success_of 'loop' is this pipeline itself")
        for line in lines
    )
    assert any("stage 's': timeout" in line for line in lines)  # with the other problems


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("depends_on", [{"pipeline": ""}], "at least 1 character"),
        ("depends_on", [{"pipeline": "x", "max_age": "soon"}], "is not a duration"),
        ("depends_on", [{"name": "x"}], "name"),
        ("triggers", [{"on_success_of": "x", "when": "always"}], "when"),
        ("requires", [{"asset": "a b"}], "asset name 'a b'"),
    ],
)
def test_a_malformed_link_is_refused(field, value, message):
    with pytest.raises(InvalidPipeline) as raised:
        validate_data({"name": "p", field: value, "stages": [{"id": "s", "uses": "noop"}]})
    assert message in str(raised.value)


def test_the_schema_describes_the_links_and_the_chain_examples_pass_it():
    result = CliRunner().invoke(cli, ["schema"])
    schema = json.loads(result.stdout)
    Draft202012Validator.check_schema(schema)
    for field in ("depends_on", "requires", "provides", "triggers"):
        assert field in schema["properties"]
    validator = Draft202012Validator(schema)
    assert not list(validator.iter_errors(load_document(REPO / "examples/chain/metrics-weekly.yaml").data))
    shorthand = {"name": "x", "depends_on": ["a"], "requires": ["b"], "stages": [{"id": "s"}]}
    assert not list(validator.iter_errors(shorthand))
    assert list(validator.iter_errors({**shorthand, "triggers": ["a"]}))  # a trigger is a mapping


@pytest.mark.parametrize("path", CHAIN, ids=lambda p: p.name)
def test_the_chain_examples_validate(path):
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_the_chain_examples_are_the_four_pipelines_linked_in_order():
    specs = {p.stem: load_pipeline(p) for p in CHAIN}
    assert sorted(specs) == sorted(FOUR)
    for upstream, downstream in pairwise(FOUR):
        assert upstream in [d.pipeline for d in specs[downstream].depends_on]
        assert upstream in [t.on_success_of for t in specs[downstream].triggers]
    assert "market_data" in specs["data-daily"].provides
    assert "market_data" in [r.asset for r in specs["scenarios-weekly"].requires]


def test_dependencies_not_met_is_exit_code_4_and_names_each():
    error = DependenciesNotMet("scenarios-weekly", ["data-daily: last success 31 h ago, older than 26 h"])
    assert error.exit_code == 4
    assert "  data-daily: last success 31 h ago, older than 26 h" in str(error)
    assert report_error(error) == 4


def test_the_docs_explain_the_links_with_the_four_pipelines():
    for field in ("depends_on", "requires", "provides", "triggers"):
        rows = [line for line in DOC.splitlines() if line.startswith(f"| `{field}` |")]
        assert len(rows) == 1, field
    section = DOC.split("## Pipelines that depend on pipelines", 1)[1].split("\n## ", 1)[0]
    for name in FOUR + [
        "--force",
        "--wait-for-deps",
        "chain run",
        "chain resume",
        "pipelines graph",
        "skipped",
    ]:
        assert name in section, name
    assert re.search(r"exit(s| code)? 4", section)
    readme = README.split("## Pipelines that depend on pipelines", 1)[1].split("\n## ", 1)[0]
    for name in FOUR + ["hook sender", "chordflow chain run", "chordflow pipelines"]:
        assert name in readme, name
