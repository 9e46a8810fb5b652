"""The reader's inlined loop (`Reader._events`) builds what its event methods build one by one:
the same data, the same lines, the same problems, the same refusals; and without recording lines
(the default: they are found by reading again when first asked for) it builds the same too."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from orchestration.errors import InvalidPipeline
from orchestration.language import yaml_reader
from orchestration.language.limits import Limits
from orchestration.language.yaml_reader import Reader, _Refused


class OneByOne(Reader):
    """Every event through its method: the reader without the inlined common cases."""

    def _events(self, events: Any) -> None:
        documents = 0
        for event in events:
            kind = type(event)
            if kind is ScalarEvent:
                self._scalar(event)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self._start(event)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                self._end()
            elif kind is AliasEvent:
                self._alias(event)
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    line = event.start_mark.line + 1
                    raise _Refused(
                        "the file holds more than one YAML document (---); keep one per file", line
                    )
            elif kind is StreamEndEvent:
                break


def outcome(
    reader: type[Reader], text: str, max_depth: int = 64, max_nodes: int = 1_000_000, record: bool = True
) -> Any:
    built = reader("f.yaml", Limits(), max_depth, max_nodes, record_lines=record)
    try:
        document = built.read(text)
    except InvalidPipeline as exc:
        return "refused", [str(p) for p in exc.problems]
    return document.data, dict(document.lines), built.references, built.aliased, built.nodes


def test_lines_are_found_when_first_asked_for():
    document = Reader("f.yaml", Limits(), 64, 1000).read("a: 1\nb:\n  - c\n")
    assert document.lines._find is not None  # not yet
    assert document.line_of("b", 0) == 3
    assert dict(document.lines) == {(): 1, ("a",): 1, ("b",): 2, ("b", 0): 3}


TEXTS = [
    "name: x\nstages:\n  - id: a\n    uses: noop\n    uses: again\n",  # a key twice
    "a: 1\nb: {c: [1, 2, {d: e}], f: '${x}'}\nc: [[], {}, [[3]]]\n",
    "base: &b {x: 1, y: [1, 2]}\nuse: *b\nmerged:\n  <<: *b\n  x: 2\n",
    "m:\n  <<: [&a {p: 1}, &c {q: 2}]\n  '<<': quoted\n",
    "m: {<<: 3}\n",  # a merge of a scalar
    "? [1, 2]\n: list key\n? {a: 1}\n: mapping key\nk: v\n",
    "n: " + "9" * 1500 + "\nlist: [" + "8" * 1200 + "]\n",
    "t: !!str 12\nu: !!int '7'\nv: !!float x\nw: !foo bar\n",
    "x: &s1 text\ny: *s1\nz: &l [1, *s1]\n",
    "- 1\n- 2\n",
    "just text\n",
    "",
    "a: 1\n---\nb: 2\n",
    "a: [" * 70 + "]" * 70 + "\n",
    "a: &a [1, 2]\nb: [*a, *a, *a, *a]\n",
    "1: int key\n1.5: float key\ntrue: bool key\nnull: null key\n~: again\n",
    "a: {b: 1, b: 2}\nc: [{d: 1, d: 1}]\n",
    "a: &x {b: *x}\n",
]


@pytest.fixture(params=["libyaml", "pure"])
def loader(request, monkeypatch):
    """Both of PyYAML's parsers: libyaml's (CSafeLoader) and its own in Python (without libyaml)."""
    if request.param == "pure":
        monkeypatch.setattr(yaml_reader, "_LOADER", yaml.SafeLoader)
    return request.param


@pytest.mark.parametrize("text", TEXTS)
def test_the_inlined_loop_reads_as_the_methods_do(text, loader):
    assert outcome(Reader, text) == outcome(OneByOne, text) == outcome(Reader, text, record=False)


@pytest.mark.parametrize("limits", [(3, 1_000_000), (4, 1_000_000), (5, 1_000_000), (64, 5), (64, 12)])
@pytest.mark.parametrize(
    "text",
    [
        "a: [1, [2, [3, [4]]]]\nb: {c: d, e: [f, g, h, i, j, k]}\n",
        "a: &x [[{k: [1]}]]\nb: [*x]\n",  # an alias adds the height of what it names
    ],
)
def test_the_limits_stop_both_at_the_same_event(text, limits, loader):
    assert outcome(Reader, text, *limits) == outcome(OneByOne, text, *limits)
    assert outcome(Reader, text, *limits) == outcome(Reader, text, *limits, record=False)


keys = st.one_of(st.text(max_size=5), st.integers(-3, 3), st.booleans(), st.none())
data = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data, st.booleans(), st.sampled_from(["", "\ndup: 1\ndup: 2\n"]))
def test_any_dumped_data_reads_the_same_both_ways(value, flow, tail):
    text = yaml.safe_dump({"top": value}, default_flow_style=flow, allow_unicode=True) + tail
    assert outcome(Reader, text) == outcome(OneByOne, text) == outcome(Reader, text, record=False)


@pytest.mark.parametrize("text", ["name: x\x07\nstages: []\n", "a: [1\n", "a: b: c\n"])
def test_a_bad_character_or_syntax_is_refused_with_its_line_by_either_parser(text, loader):
    refused, messages = outcome(Reader, text)
    assert refused == "refused" and len(messages) == 1
    assert messages[0].startswith(("f.yaml:1: ", "f.yaml:2: ")) and "line" in messages[0]
