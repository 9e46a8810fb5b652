"""Rendering a run graph as Mermaid and DOT: labels, edges, fan-out, critical path, states, escaping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestration.graph.render import CRITICAL_COLOUR, STATE_COLOURS, to_dot, to_mermaid
from orchestration.graph.resolve import resolve
from orchestration.language.builder import Pipeline
from orchestration.language.validation import load_pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def market():
    return resolve(load_pipeline(REPO / "examples" / "market-weekly.yaml", env={}))


def node_names(text: str, graph) -> dict[str, str]:
    """Stage id -> generated node name, read back from the output."""
    names = {}
    for node in graph.nodes:
        match = re.search(rf"^\s+(s\d+)\W.*?\b{re.escape(node.id)}\b", text, re.MULTILINE)
        assert match, node.id
        names[node.id] = match[1]
    return names


def test_mermaid_has_every_stage_edge_fan_out_and_the_critical_path(market):
    text = to_mermaid(market)
    assert text.splitlines()[1] == "flowchart LR"
    names = node_names(text, market)
    assert 's3[["train<br/>market.stages:train<br/>matrix ×4"]]' in text
    assert "for_each scenarios ≤16" in text
    edges = re.findall(r"^\s+(s\d+) (-->|==>) (s\d+)$", text, re.MULTILINE)
    expected = {(names[need], names[n.id]) for n in market.nodes for need in n.needs}
    assert {(a, b) for a, _, b in edges} == expected
    assert all(arrow == "==>" for _, arrow, _ in edges)  # a chain: every edge is critical
    assert f"linkStyle 0,1,2,3 stroke:{CRITICAL_COLOUR}" in text


def test_dot_has_every_stage_edge_fan_out_and_the_critical_path(market):
    text = to_dot(market)
    assert text.startswith('digraph "market-weekly" {') and text.rstrip().endswith("}")
    names = node_names(text, market)
    edges = re.findall(r"^\s+(s\d+) -> (s\d+)( \[.*\])?;$", text, re.MULTILINE)
    assert {(a, b) for a, b, _ in edges} == {
        (names[need], names[n.id]) for n in market.nodes for need in n.needs
    }
    assert re.search(r'label="train\\nmarket.stages:train\\nmatrix ×4".*peripheries=2', text)
    assert text.count("penwidth=3") == 5 + 4  # every node and edge of the chain


def test_only_critical_edges_are_emphasised():
    graph = resolve(
        Pipeline("p")
        .add("a", "noop", estimate=1)
        .add("slow", "noop", needs="a", estimate=5)
        .add("fast", "noop", needs="a", estimate=1)
        .add("join", "noop", needs=["fast", "slow"])
        .spec
    )
    mermaid = to_mermaid(graph)
    names = node_names(mermaid, graph)
    assert f"{names['a']} ==> {names['slow']}" in mermaid
    assert f"{names['a']} --> {names['fast']}" in mermaid
    assert f"{names['fast']} --> {names['join']}" in mermaid
    assert f"style {names['fast']} " not in mermaid and f"style {names['slow']} stroke" in mermaid
    dot = to_dot(graph)
    assert f"{names['a']} -> {names['fast']};" in dot
    assert f'{names["a"]} -> {names["slow"]} [color="{CRITICAL_COLOUR}", penwidth=3];' in dot


def test_nodes_are_coloured_by_state(market):
    states = {
        "data": "succeeded",
        "scenarios": "succeeded",
        "metrics": "running",
        "train": "queued",
        "report": "upstream_failed",
    }
    mermaid = to_mermaid(market, states)
    names = node_names(mermaid, market)
    assert f"classDef succeeded fill:{STATE_COLOURS['succeeded']}" in mermaid
    assert f"class {names['data']},{names['scenarios']} succeeded" in mermaid
    assert f"class {names['report']} upstream_failed" in mermaid
    assert "(running)" in mermaid  # readable without colour
    dot = to_dot(market, states)
    assert re.search(rf"{names['metrics']} \[.*fillcolor=\"{STATE_COLOURS['running']}\"", dot)
    assert "classDef" not in to_mermaid(market)  # no states, no colours


def test_every_state_has_its_own_colour():
    expected = {
        "pending",
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "skipped",
        "cancelled",
        "upstream_failed",
        "fallback",
    }
    assert set(STATE_COLOURS) == expected
    assert len(set(STATE_COLOURS.values())) == len(expected)


def test_an_unknown_state_is_written_but_not_coloured(market):
    text = to_mermaid(market, {"data": "mystery"})
    assert "(mystery)" in text and "classDef" not in text


HOSTILE_TYPE = 'evil"]; click s0 call alert(1) %% <script>\n --> s1 [label="x"] \\ }'


def test_ids_and_types_are_escaped():
    graph = resolve(Pipeline('odd "name" }').add("a-1.x", HOSTILE_TYPE).add("b", "noop", needs="a-1.x").spec)
    mermaid = to_mermaid(graph)
    lines = mermaid.splitlines()
    # comment, header, two nodes, one edge, two critical-path styles, one linkStyle: nothing injected
    assert len(lines) == 8, mermaid
    node_line = lines[2]
    assert re.fullmatch(r'    s0\["a-1\.x<br/>[^"\[\]<>{}\n%]*"\]', node_line), node_line
    assert "#34;" in node_line and "#60;script#62;" in node_line
    dot = to_dot(graph)
    assert 'digraph "odd \\"name\\" }" {' in dot
    label = re.search(r'^    s0 \[label="((?:[^"\\]|\\.)*)"', dot, re.MULTILINE)
    assert label and "\\n" in label[1] and '\\"' in label[1] and "\\\\" in label[1]
    assert len(dot.splitlines()) == 4 + 2 + 1 + 1  # header lines, two nodes, one edge, closing brace
