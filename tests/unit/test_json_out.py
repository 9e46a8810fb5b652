"""`--json` documents are written in one pass (`json_out.document`), character for character what
`json.dumps(typed(data), indent=2, ensure_ascii=False)` writes, with DEL and C1 controls escaped."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.cli.json_out import TIME_KEYS, document, escape_c1, typed


def reference(data: Any) -> str:
    return escape_c1(json.dumps(typed(data), indent=2, ensure_ascii=False))


def outcome(write: Any, data: Any) -> tuple[str, str]:
    """The text written, or the error raised (a time far outside the calendar, say)."""
    try:
        return "text", write(data)
    except (ValueError, OverflowError, OSError, TypeError) as exc:
        return "error", type(exc).__name__


class Color(enum.StrEnum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 7


keys = st.one_of(
    st.sampled_from(sorted(TIME_KEYS) + ["done_at", "id", "état", "a\u0085b", ""]),
    st.text(max_size=8),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=4e9),  # a time under a time key
    st.text(max_size=12),
    st.sampled_from([Color.RED, Size.BIG, "\x7f\x9f\x1b[2J", datetime(2027, 1, 15, 8, tzinfo=UTC)]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(st.one_of(st.text(max_size=4), st.integers(-3, 3)), max_size=4),
        st.dictionaries(keys, inner, max_size=6),
    ),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_a_document_is_what_the_json_module_writes_of_the_typed_data(data):
    assert outcome(document, data) == outcome(reference, data)


def test_a_plan_like_document_is_written_the_same():
    stage = {
        "position": 1,
        "id": "s1",
        "needs": ("a", "b"),
        "estimate_s": 1.0,
        "timeout_s": None,
        "retry": {"max_attempts": 3, "delay": 2.0, "retry_on": []},
        "limits": [],
        "waits": None,
        "last": 1_800_000_000,
    }
    data = {"stages": [stage, {**stage, "id": "s2"}], "makespan_s": float("inf"), "empty": {}}
    assert document(data) == reference(data)


def test_a_mapping_met_again_is_written_the_same_at_any_depth():
    policy = {"max_attempts": 3, "at": 1_800_000_000, "retry_on": ["E"], "inner": {"k": float("nan")}}
    data = {"stages": [{"retry": policy}, {"retry": policy}], "top": policy, "deep": {"d": [policy]}}
    assert document(data) == reference(data)


@pytest.mark.parametrize("data", [{"x": object()}, {("a", "b"): 1}, [b"bytes"]])
def test_what_json_refuses_it_still_refuses(data):
    with pytest.raises(TypeError):
        reference(data)
    with pytest.raises(TypeError):
        document(data)
