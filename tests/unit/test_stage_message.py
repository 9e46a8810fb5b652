"""The stage message: one parser of a stage task's arguments (engine/stage_message.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestration.engine.messages import COUNT, ITEM, item_template, stage_message
from orchestration.engine.stage_message import MalformedMessage, StageMessage
from orchestration.graph.resolve import resolve
from orchestration.language.validation import validate_data


def test_the_forms_a_worker_receives():
    assert StageMessage.parse(["r1", "a", 1, None]) == StageMessage("r1", "a")
    assert StageMessage.parse(("r1", "a", 3, 7)) == StageMessage("r1", "a", 3, 7)
    assert StageMessage.parse(["r1", "a", 1, 10, 5]) == StageMessage("r1", "a", 1, 10, 5)
    assert StageMessage.parse(["r1", "a"]) == StageMessage("r1", "a")


@pytest.mark.parametrize(
    ("args", "kwargs", "why"),
    [
        ({"not": "a list"}, None, "arguments are a list"),
        ("r1", None, "arguments are a list"),
        ([1, 2], None, "run id"),
        (["r1"], None, "2 to 5 arguments"),
        (["r1", "a", 1, None, 1, 1], None, "2 to 5 arguments"),
        (["r1", "a", True, None], None, "attempt"),
        (["r1", "a", 0, None], None, "attempt"),
        (["r1", "a", 1, -1], None, "item"),
        (["r1", "a", 1, "2"], None, "item"),
        (["r1", "a", 1, None, 3], None, "chunk"),
        (["r1", "a", 2, 0, 3], None, "chunk"),
        (["r1", "a", 1, 0, 0], None, "count"),
        (["r1", "a", 1, 0, 10**9], None, "count"),
        (["r1:states", "a", 1, None], None, "run id"),
        (["r1", "a", 1, None], {"x": 1}, "keyword"),
    ],
)
def test_what_is_refused_and_why(args, kwargs, why):
    with pytest.raises(MalformedMessage, match=why):
        StageMessage.parse(args, kwargs)


def test_a_chunk_and_its_items():
    chunk = StageMessage("r1", "a", 1, 4, 3)
    assert list(chunk.items) == [4, 5, 6]
    assert chunk.one(5) == StageMessage("r1", "a", 1, 5)
    assert chunk.args == ("r1", "a", 1, 4, 3)
    assert list(StageMessage("r1", "a").items) == []


def test_the_stored_form_round_trips():
    for m in (StageMessage("r1", "a"), StageMessage("r1", "a", 4, 2)):
        assert StageMessage.from_payload(m.payload()) == m
    with pytest.raises(MalformedMessage, match="not JSON"):
        StageMessage.from_payload("{")


def _node(**extra):
    spec = validate_data({"name": "m", "stages": [{"id": "a", "uses": "noop", **extra}]})
    return resolve(spec).node("a")


def test_broker_texts_carry_exactly_what_the_parser_reads():
    node = _node()
    body = json.loads(json.loads(stage_message(StageMessage("r1", "a", 2, 3), node))["body"])
    assert StageMessage.parse(body[0], body[1]) == StageMessage("r1", "a", 2, 3)
    for chunked in (False, True):
        text = item_template("r1", node, chunked).replace(ITEM, "6").replace(COUNT, "4")
        body = json.loads(json.loads(text)["body"])
        assert StageMessage.parse(body[0], body[1]) == StageMessage("r1", "a", 1, 6, 4 if chunked else 1)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(args=JSON, kwargs=st.none() | st.dictionaries(st.text(max_size=5), JSON, max_size=2))
def test_any_json_is_a_message_or_a_malformed_message(args, kwargs):
    try:
        message = StageMessage.parse(args, kwargs)
    except MalformedMessage as exc:
        assert str(exc)
    else:
        assert StageMessage.parse(list(message.args)) == message
