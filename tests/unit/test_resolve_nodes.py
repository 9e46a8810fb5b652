"""resolve builds each Node without model_construct's per-field loop (`_trusted_node`), and the
node is the one model_construct builds: the same fields in the same order, the same fields set,
the same dump, equal. A stored graph read back to be kept (`RunGraph.stored`) is the same graph,
its nodes sharing their sets of fields set."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.graph.resolve import Node, RunGraph, _trusted_node, resolve
from orchestration.language.validation import load_pipeline
from orchestration.settings import Settings

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml"))


def same_node(ours: Node, theirs: Node) -> None:
    assert list(ours.__dict__.items()) == list(theirs.__dict__.items())
    assert ours.model_fields_set == theirs.model_fields_set
    assert ours.__pydantic_extra__ == theirs.__pydantic_extra__
    assert ours.__pydantic_private__ == theirs.__pydantic_private__
    assert ours == theirs
    assert ours.model_dump_json() == theirs.model_dump_json()
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_resolved_node_is_what_model_construct_builds(path):
    graph = resolve(load_pipeline(path, env={}), Settings())
    assert graph.nodes
    for node in graph.nodes:
        same_node(node, Node.model_construct(**node.__dict__))


def test_values_that_leave_a_field_out_go_to_model_construct():
    partial = {"id": "a", "type": "noop", "queue": "cpu"}
    node = _trusted_node(**partial)
    same_node(node, Node.model_construct(**partial))
    assert node.model_fields_set == {"id", "type", "queue"}
    assert node.estimate_s == 1.0  # a default filled in


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_a_stored_graph_read_back_shares_its_fields_sets_and_is_the_same_graph(path):
    raw = resolve(load_pipeline(path, env={}), Settings()).model_dump_json(exclude_defaults=True)
    kept, plain = RunGraph.stored(raw), RunGraph.model_validate_json(raw)
    assert kept == plain
    for ours, theirs in zip(kept.nodes, plain.nodes, strict=True):
        same_node(ours, theirs)
    sets = {frozenset(n.model_fields_set): n.model_fields_set for n in kept.nodes}
    assert all(n.model_fields_set is sets[frozenset(n.model_fields_set)] for n in kept.nodes)


def test_a_copy_of_a_node_that_shares_its_fields_set_leaves_the_others_alone():
    graph = RunGraph.stored(
        '{"name":"p","version":"1","nodes":[{"id":"a","type":"noop","queue":"cpu"},'
        '{"id":"b","type":"noop","queue":"cpu"}]}'
    )
    a, b = graph.nodes
    assert a.model_fields_set is b.model_fields_set
    copy = a.model_copy(update={"timeout_s": 5.0})
    assert copy.model_fields_set == {"id", "type", "queue", "timeout_s"}
    assert a.model_fields_set == b.model_fields_set == {"id", "type", "queue"}
    with pytest.raises(ValueError, match="frozen"):
        a.timeout_s = 1.0  # type: ignore[misc]
