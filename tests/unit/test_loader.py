"""Reading pipeline files: line numbers, JSON, hostile input, and ${...} interpolation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language import loader
from orchestration.language.loader import Document, load_document, load_text, parse_override

PIPELINE = """\
# a comment first, so line numbers are not just indexes
name: market-weekly
variables:
  mode: weekly

stages:
  - id: data
    uses: market.stages:fetch_data
    params: {days: 30, mode: "${mode}"}
  - id: scenarios
    uses: shell
    run: [python, -m, scenarios]
    needs:
      - data
    params:
      depth: 3
      nested:
        key: value
"""


def refused(load: Callable[[], object], seconds: float = 5.0) -> InvalidPipeline:
    """The InvalidPipeline that `load` raises, checking it came within `seconds`."""
    start = time.perf_counter()
    with pytest.raises(InvalidPipeline) as caught:
        load()
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.2f}s"
    return caught.value


def messages(error: InvalidPipeline) -> str:
    return "\n".join(str(p) for p in error.problems)


# --- line numbers ---------------------------------------------------------------------------------


def test_lines_of_stages_and_nested_keys() -> None:
    doc = load_text(PIPELINE, "pipeline.yaml", env={})
    assert doc.lines[()] == 1
    assert doc.lines[("name",)] == 2
    assert doc.lines[("stages",)] == 6
    assert doc.lines[("stages", 0)] == 7
    assert doc.lines[("stages", 0, "params", "days")] == 9
    assert doc.lines[("stages", 1)] == 10
    assert doc.lines[("stages", 1, "run", 2)] == 12
    assert doc.lines[("stages", 1, "needs")] == 13  # a mapping entry's line is its key's
    assert doc.lines[("stages", 1, "needs", 0)] == 14
    assert doc.lines[("stages", 1, "params", "nested", "key")] == 18
    assert doc.source == "pipeline.yaml"


def test_line_of_falls_back_to_the_longest_known_prefix() -> None:
    doc = load_text(PIPELINE, env={})
    assert doc.line_of("stages", 1, "params", "depth") == 16
    assert doc.line_of("stages", 1, "params", "missing", 3) == 15
    assert doc.line_of("nope") == 1
    assert doc.line_of() == 1


def test_data_is_plain_python() -> None:
    doc = load_text(PIPELINE, env={})
    assert doc.data["stages"][1] == {
        "id": "scenarios",
        "uses": "shell",
        "run": ["python", "-m", "scenarios"],
        "needs": ["data"],
        "params": {"depth": 3, "nested": {"key": "value"}},
    }


def test_unquoted_values_are_typed_as_in_yaml_1_2_and_json() -> None:
    text = (
        "a: 1e-3\nb: 2024-01-01\nc: 0x10\nd: ~\ne: true\nf: '1'\ng: 1.5E+3\nh: =\n"
        "i: on\nj: NO\nk: 1:30\nl: 0o17\nm: 0755\nn: -.inf\no: .5\np: 'true'\nq:\nr: 1_000\ns: +7\n"
    )
    assert load_text(text).data == {
        "a": 0.001, "b": "2024-01-01", "c": 16, "d": None, "e": True, "f": "1", "g": 1500.0, "h": "=",
        "i": "on", "j": "NO", "k": "1:30", "l": 15, "m": 755, "n": float("-inf"), "o": 0.5, "p": "true",
        "q": None, "r": "1_000", "s": 7,
    }  # fmt: skip


def test_merge_keys_fill_in_what_the_mapping_does_not_say() -> None:
    doc = load_text(
        "base: &base {queue: cpu, timeout: 1h}\nstages:\n  - id: a\n    <<: *base\n    timeout: 5m\n"
    )
    assert doc.data["stages"][0] == {"id": "a", "timeout": "5m", "queue": "cpu"}
    assert doc.line_of("stages", 0, "queue") == 3  # merged keys point at the mapping


def test_merge_from_a_list_and_a_literal_double_less_than() -> None:
    doc = load_text("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc: {<<: [*a, *b], w: <<, '<<': q, l: [<<]}\n")
    assert doc.data["c"] == {"w": "<<", "<<": "q", "l": ["<<"], "x": 1, "y": 1, "z": 2}
    assert parse_override("x=<<") == ("x", "<<")


def test_aliases_do_not_share_objects_in_the_result() -> None:
    doc = load_text("p: &p {x: [1]}\nq: *p\n")
    assert doc.data["p"] == doc.data["q"]
    doc.data["q"]["x"].append(2)
    assert doc.data["p"] == {"x": [1]}
    assert doc.line_of("q", "x", 0) == 2  # inside an alias: the alias's line


def test_bom_is_accepted() -> None:
    assert load_text("\ufeffname: x\n".encode()).data == {"name": "x"}


# --- JSON -----------------------------------------------------------------------------------------


def test_json_file_loads_with_lines(tmp_path: Path) -> None:
    spec = {
        "name": "j",
        "stages": [{"id": "a", "uses": "noop"}, {"id": "b", "needs": ["a"], "params": {"x": 1.5e-3}}],
    }
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(spec, indent="\t"))  # tabs: fine in JSON, and so here
    doc = load_document(path, env={})
    assert doc.data == spec
    assert doc.source == str(path)
    text = path.read_text().splitlines()
    assert '"needs"' in text[doc.line_of("stages", 1, "needs") - 1]
    assert '"a"' in text[doc.line_of("stages", 1, "needs", 0) - 1]


def test_json_syntax_error_says_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text('{\n  "name": "x",\n  "stages": [\n    {"id": "a" "uses": "noop"}\n  ]\n}\n')
    error = refused(lambda: load_document(path))
    (problem,) = error.problems
    assert problem.line == 4
    assert "JSON syntax error at line 4, column" in problem.message
    assert problem.source == str(path)


def test_yaml_syntax_error_says_line_and_column() -> None:
    error = refused(lambda: load_text("name: x\nstages:\n  - id: a\n   uses: [b\n", "p.yaml"))
    assert "YAML syntax error at line" in messages(error)
    assert error.problems[0].line is not None


# --- hostile input --------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    with path.open("wb") as file:
        chunk = b"# padding padding padding padding padding padding padding padding padding\n" * 14_000
        while file.tell() < 50 * 1024 * 1024:
            file.write(chunk[: 50 * 1024 * 1024 - file.tell()])
    assert path.stat().st_size == 52_428_800
    error = refused(lambda: load_document(path), seconds=1.0)
    assert messages(error) == f"{path}: {path} is 52,428,800 bytes; the limit is 10 MiB"


def test_text_over_the_size_limit_is_refused() -> None:
    refused(lambda: load_text("#" * (loader.MAX_FILE_BYTES + 1)))
    refused(lambda: load_text(b"#" * (loader.MAX_FILE_BYTES + 1)))


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    error = refused(lambda: load_document(tmp_path / "nope.yaml"))
    assert "cannot read" in messages(error)


def test_non_utf8_bytes_say_where() -> None:
    error = refused(lambda: load_text(b"name: x\nstages:\n  - id: caf\xe9\n", "p.yaml"))
    (problem,) = error.problems
    assert problem.line == 3
    assert "not UTF-8" in problem.message and "0xe9 at offset 27 (line 3)" in problem.message


def test_lone_surrogates_in_text_are_refused() -> None:
    refused(lambda: load_text("name: \udcff\n"))


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_an_alias_bomb_is_refused_fast() -> None:
    error = refused(lambda: load_text(BILLION_LAUGHS, "bomb.yaml"), seconds=1.0)
    (problem,) = error.problems
    assert "aliases expand too much" in problem.message
    assert problem.line == 7


def test_aliases_within_the_limit_are_fine() -> None:
    doc = load_text(BILLION_LAUGHS.split("e:")[0])  # 9**4 values
    assert len(doc.data["d"]) == 9 and doc.data["d"][8][8][8] == ["lol"] * 9


@pytest.mark.parametrize(
    "text",
    ["[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "1" + "}" * 10_000, "- " * 10_000 + "x\n"],
    ids=["lists", "mappings", "block-lists"],
)
def test_deep_nesting_is_refused_without_recursion(text: str) -> None:
    error = refused(lambda: load_text(text), seconds=1.0)
    assert f"nested more than {loader.MAX_DEPTH} levels deep" in messages(error)


def test_depth_through_aliases_is_counted() -> None:
    deep = "[" * 40 + "1" + "]" * 40
    error = refused(lambda: load_text(f"a: &a {deep}\nb: [{deep.replace('1', '*a')}]\n"))
    assert "alias *a nests the file more than 64 levels deep" in messages(error)


def test_nesting_at_the_limit_is_fine() -> None:
    depth = loader.MAX_DEPTH - 1  # the top-level mapping is one level
    doc = load_text("a: " + "[" * depth + "]" * depth)
    assert doc.data["a"] is not None


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("name: !!python/object/apply:os.system ['echo hacked']\n", "!!python/object/apply:os.system"),
        ("name: !!python/name:os.system\n", "!!python/name:os.system"),
        ("stages: !!set {a, b}\n", "!!set"),
        ("name: !!binary aGk=\n", "!!binary"),
        ("name: !custom x\n", "!custom"),
        ("name: !<tag:yaml.org,2002:python/object:os.Foo> {}\n", "!!python/object:os.Foo"),
    ],
)
def test_tags_are_refused(text: str, tag: str) -> None:
    error = refused(lambda: load_text(text, "p.yaml"))
    (problem,) = error.problems
    assert problem.message.startswith(f"tag {tag} is not allowed")
    assert problem.line == 1


def test_standard_tags_are_allowed() -> None:
    doc = load_text("a: !!str 12\nb: !!int '12'\nc: !!float 1\nd: ! 12\n")
    assert doc.data == {"a": "12", "b": 12, "c": 1.0, "d": "12"}


def test_a_wrong_standard_tag_is_a_problem_with_its_line() -> None:
    error = refused(lambda: load_text("a: 1\nb: !!int nope\n"))
    assert messages(error) == "<string>:2: b: 'nope' is not a valid !!int"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- id: a\n", "the top level must be a mapping (name: ..., stages: ...), not a list"),
        ("just text\n", "not a single value"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("name: a\n---\nname: b\n", "more than one YAML document"),
        ("a: &x [*x]\n", "alias *x is used inside its own anchor"),
        ("a: *x\n", "alias *x is used before its anchor"),
        ("a: &x 1\nb: &x 2\n", "anchor &x is defined twice"),
        ("a: \x01\n", "YAML syntax error at line 1, column 4: character U+0001 is not allowed"),
        ("a: é\nbé: é\x02\n", "YAML syntax error at line 2, column 6: character U+0002"),
        ("? [a]\n: 1\n", "a mapping key must be a single value"),
        ("<<: 1\n", "<< must be followed by a mapping"),
    ],
)
def test_malformed_documents_are_explained(text: str, expected: str) -> None:
    assert expected in messages(refused(lambda: load_text(text, "p.yaml")))


def test_duplicate_keys_are_all_reported_with_lines_and_stage() -> None:
    text = "name: a\nname: b\nstages:\n  - id: s1\n    uses: x\n    uses: y\n"
    error = refused(lambda: load_text(text, "p.yaml"))
    assert error.problems == [
        Problem("name: key 'name' is given twice (first on line 1)", line=2, source="p.yaml"),
        Problem("uses: key 'uses' is given twice (first on line 5)", stage_id="s1", line=6, source="p.yaml"),
    ]


def test_duplicate_keys_in_json_are_refused() -> None:
    assert "given twice" in messages(refused(lambda: load_text('{"a": 1, "a": 2}')))


def test_too_many_values_without_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_NODES", 1000)
    assert "the file has over 1,000 values" in messages(refused(lambda: load_text(f"a: [{'1,' * 1000}]")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(alphabet="{}[]:-,&*!|>'\"#%@`?<$ \n\tab01~.", max_size=60), st.binary(max_size=60)))
def test_any_input_gives_a_document_or_invalid_pipeline(text: str | bytes) -> None:
    try:
        doc = load_text(text, env={})
    except InvalidPipeline as exc:
        assert exc.problems
    else:
        assert isinstance(doc.data, dict)


# --- interpolation --------------------------------------------------------------------------------


def test_variables_read_the_environment_with_defaults() -> None:
    text = "variables:\n  root: ${ROOT}\n  mode: ${MODE:-weekly}\n  both: ${ROOT}/${MODE:-x}\n"
    doc = load_text(text, env={"ROOT": "/data"})
    assert doc.data["variables"] == {"root": "/data", "mode": "weekly", "both": "/data/x"}


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHORDFLOW_TEST_ROOT", "/from/env")
    assert load_text("a: ${CHORDFLOW_TEST_ROOT}\n").data["a"] == "/from/env"


def test_the_file_reads_variables_then_the_environment_then_defaults() -> None:
    text = (
        "variables: {mode: weekly}\n"
        "stages:\n"
        "  - id: a\n"
        "    params: {m: '${mode}', h: '${HOME_DIR}', d: '${DAYS:-30}', t: 'run ${mode} in ${HOME_DIR}'}\n"
    )
    doc = load_text(text, env={"HOME_DIR": "/home/x", "mode": "from-env"})
    assert doc.data["stages"][0]["params"] == {
        "m": "weekly",
        "h": "/home/x",
        "d": "30",
        "t": "run weekly in /home/x",
    }


def test_a_lone_reference_keeps_the_variable_type() -> None:
    text = (
        "variables: {n: 3, on: true, list: [1, 2], map: {a: 1}, none: null}\n"
        "p: {n: '${n}', on: '${on}', list: '${list}', map: '${map}', none: '${none}'}\n"
        "t: 'n=${n} on=${on} list=${list} map=${map} none=${none}'\n"
    )
    doc = load_text(text, env={})
    assert doc.data["p"] == {"n": 3, "on": True, "list": [1, 2], "map": {"a": 1}, "none": None}
    assert doc.data["t"] == 'n=3 on=true list=[1, 2] map={"a": 1} none=null'
    doc.data["p"]["list"].append(3)
    assert doc.data["variables"]["list"] == [1, 2]  # a copy, not the variable itself


def test_double_dollar_is_a_literal() -> None:
    doc = load_text("variables: {x: 1}\na: 'cost $${x} and ${x}'\nb: $${NOT_SET}\n", env={})
    assert doc.data["a"] == "cost ${x} and 1"
    assert doc.data["b"] == "${NOT_SET}"


def test_when_and_condition_are_left_for_the_expression_evaluator() -> None:
    text = "stages:\n  - id: a\n    when: ${x} == 1\n    condition: '${y}'\n    params: {w: '${z:-ok}'}\n"
    doc = load_text(text, env={})
    assert doc.data["stages"][0] == {
        "id": "a",
        "when": "${x} == 1",
        "condition": "${y}",
        "params": {"w": "ok"},
    }


def test_overrides_replace_and_add_variables_as_given() -> None:
    text = "variables: {mode: weekly, root: '${ROOT:-/out}'}\na: '${mode} ${extra}'\n"
    doc = load_text(text, overrides={"mode": "daily", "extra": "${HOME}"}, env={})
    assert doc.data["variables"] == {"mode": "daily", "root": "/out", "extra": "${HOME}"}
    assert doc.data["a"] == "daily ${HOME}"  # an override is final, never interpolated


def test_overrides_create_variables_when_the_file_has_none() -> None:
    doc = load_text("a: '${days}'\n", overrides=dict([parse_override("days=30")]), env={})
    assert doc.data == {"a": 30, "variables": {"days": 30}}


def test_every_missing_reference_is_reported_at_once_with_lines() -> None:
    text = (
        "name: x\n"
        "variables:\n"
        "  root: ${ROOT}\n"
        "  mode: weekly\n"
        "  other: ${mode}\n"
        "stages:\n"
        "  - id: fetch\n"
        "    params:\n"
        "      out: ${missing}/x\n"
        "  - id: report\n"
        "    run: [echo, '${nope}', '${bad name}', '${open']\n"
    )
    error = refused(lambda: load_text(text, "p.yaml", env={}))
    assert [(p.line, p.stage_id) for p in error.problems] == [
        (3, None),
        (5, None),
        (9, "fetch"),
        (11, "report"),
        (11, "report"),
        (11, "report"),
    ]
    shown = messages(error).splitlines()
    assert shown[0] == "p.yaml:3: variables.root: ${ROOT} is not set in the environment and has no default"
    assert "variables can read only the environment, not each other" in shown[1]
    assert shown[2] == (
        "p.yaml:9: stage 'fetch': params.out: ${missing} is not a variable, "
        "not set in the environment and has no default"
    )
    assert shown[3].startswith("p.yaml:11: stage 'report': run[1]: ${nope} is not a variable")
    assert "'${bad name}' is not a reference" in shown[4]
    assert "'${open' is not a reference" in shown[5]


def test_a_variable_used_many_times_cannot_blow_up_the_file() -> None:
    refs = ", ".join(["'${big}'"] * 200)  # 200 x 100 kB = 20 MB
    text = f"variables: {{big: {'x' * 100_000}}}\nrefs: [{refs}]\n"
    error = refused(lambda: load_text(text, env={}))
    assert "substituted values add up to over 10 MiB" in messages(error)


def test_variables_that_are_not_a_mapping_are_reported() -> None:
    error = refused(lambda: load_text("name: x\nvariables: [a, b]\n", "p.yaml", overrides={"a": 1}))
    assert messages(error) == "p.yaml:2: variables: variables must be a mapping of name: value"


# --- --set ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("days=30", ("days", 30)),
        ("dry_run=true", ("dry_run", True)),
        ("mode=a b", ("mode", "a b")),
        ("rate=1e-3", ("rate", 0.001)),
        ("when=2024-01-01", ("when", "2024-01-01")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        ("list=[1, 2]", ("list", "[1, 2]")),
        (" spaced =x", ("spaced", "x")),
    ],
)
def test_parse_override(item: str, expected: tuple[str, object]) -> None:
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["novalue", "=x", "1abc=x", "a.b=x"])
def test_parse_override_refuses_what_is_not_name_equals_value(item: str) -> None:
    assert "must be NAME=VALUE" in messages(refused(lambda: parse_override(item)))


# --- speed ----------------------------------------------------------------------------------------


def test_ten_thousand_stages_load_quickly(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\nstages:\n"
        + "".join(
            f"- id: s{i}\n  uses: noop\n  needs: [s{i - 1}]\n  params: {{x: 1}}\n" for i in range(10_000)
        )
    )
    timings, docs = [], []
    for _ in range(2):  # the better of two, so one hiccup of a busy machine doesn't fail it
        start = time.perf_counter()
        docs.append(load_document(path, env={}))
        timings.append(time.perf_counter() - start)
    assert min(timings) < 2.0  # ~0.45 s on an idle 2-core machine; generous for loaded CI machines
    doc = docs[-1]
    assert isinstance(doc, Document) and len(doc.data["stages"]) == 10_000
    assert doc.line_of("stages", 9_999, "needs", 0) == 40_001
