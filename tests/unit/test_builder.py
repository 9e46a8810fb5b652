"""The Python builder, and file → model → file → model being lossless."""

from __future__ import annotations

import keyword
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestration.cli.files import available_templates
from orchestration.errors import InvalidPipeline
from orchestration.graph.resolve import resolve
from orchestration.language.builder import Pipeline, dump
from orchestration.language.options import Resources, RetryPolicy
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import load_pipeline

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TEMPLATES = [path for _, path in available_templates().values()]
NO_ENV: dict[str, str] = {}


def assert_same(a: PipelineSpec, b: PipelineSpec) -> None:
    """Equal models, and equal in which fields were set (what retry merging depends on)."""
    assert a == b
    assert dump(a) == dump(b)


def round_trips(spec: PipelineSpec) -> None:
    pipeline = Pipeline.from_spec(spec)
    assert_same(pipeline.spec, spec)
    assert_same(Pipeline.from_text(pipeline.to_yaml(), env=NO_ENV).spec, spec)
    assert_same(Pipeline.from_text(pipeline.to_json(), "p.json", env=NO_ENV).spec, spec)


# --- round trips of real files ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES + TEMPLATES, ids=lambda p: p.name)
def test_every_example_and_template_round_trips(path):
    spec = load_pipeline(path, env=NO_ENV)
    round_trips(spec)
    assert resolve(Pipeline.from_file(path, env=NO_ENV).spec) == resolve(spec)


def test_design_example_round_trips_through_saved_files(tmp_path):
    spec = load_pipeline(REPO / "examples" / "market-weekly.yaml", env={"OUTPUT_ROOT": "/data/out"})
    assert spec.variables["output_root"] == "/data/out"
    assert spec.stage("data").params == {"days": 30, "mode": "weekly"}
    pipeline = Pipeline.from_spec(spec)
    for name in ("again.yaml", "again.json"):
        saved = pipeline.save(tmp_path / name)
        assert_same(Pipeline.from_file(saved, env=NO_ENV).spec, spec)
        assert_same(load_pipeline(saved, env=NO_ENV), spec)


def test_order_based_file_round_trips_to_the_same_plan():
    spec = load_pipeline(REPO / "examples" / "order-based.yaml", env=NO_ENV)
    text = Pipeline.from_spec(spec).to_yaml()
    assert "continue_on_error" not in text and "max_retries" not in text  # written in canonical keys
    again = Pipeline.from_text(text, env=NO_ENV).spec
    assert_same(again, spec)
    assert resolve(again) == resolve(spec)


def test_retry_fields_set_to_their_default_survive():
    # max_attempts: 1 and backoff: exponential equal the model defaults; dropping them
    # (exclude_defaults) would let defaults.retry's 5 attempts and fixed backoff win.
    pipeline = Pipeline("p", defaults={"retry": {"max_attempts": 5, "backoff": "fixed"}}).add(
        "a", "noop", retry={"max_attempts": 1, "backoff": "exponential"}
    )
    again = Pipeline.from_text(pipeline.to_yaml(), env=NO_ENV).spec
    node = resolve(again).node("a")
    assert node.retry == {"max_attempts": 1, "backoff": "exponential"}
    assert_same(again, pipeline.spec)


def test_strings_that_look_like_other_things_stay_strings():
    tricky = [
        "1e-3",
        "2024-01-01",
        "true",
        "yes",
        "on",
        "null",
        "~",
        "",
        "0x10",
        "1:30",
        "010",
        "<<",
        "=",
        "${HOME}",
        "$${HOME}",
        "a ${X:-y} b",
        "- item",
        "key: value",
        "#comment",
        "'quoted'",
        "line\nbreak",
        " padded ",
        "\ttab",
        "ünïcödé ✓",
        "\u2028",
        "\x85",
    ]
    pipeline = Pipeline("tricky", variables={f"v{i}": t for i, t in enumerate(tricky)})
    pipeline.add(
        "a",
        "noop",
        params={t: t for t in tricky},
        run=["echo", *tricky],
        when="variables.v0 == '${not interpolated}'",
    )
    spec = pipeline.spec
    assert spec.stage("a").params["${HOME}"] == "${HOME}"  # a builder's strings are literal
    round_trips(spec)


def test_builder_matches_the_same_pipeline_written_as_a_file():
    built = (
        Pipeline("docs", version="1")
        .add("ingest", "docs.ingest", params={"source": "./documents"})
        .add("parse", "docs.parse", needs=["ingest"], for_each="ingest")
        .add(
            "embed",
            "docs.embed",
            needs="parse",
            resources=Resources(gpu=1),
            retry=RetryPolicy(max_attempts=2),
            timeout="5m",
        )
    )
    from_file = Pipeline.from_text(
        """
name: docs
version: "1"
stages:
  - {id: ingest, uses: docs.ingest, params: {source: ./documents}}
  - {id: parse, uses: docs.parse, needs: [ingest], for_each: ingest}
  - {id: embed, uses: docs.embed, needs: [parse], resources: {gpu: 1}, retry: {max_attempts: 2}, timeout: 5m}
""",
        env=NO_ENV,
    )
    assert_same(built.spec, from_file.spec)
    assert resolve(built.spec).node("embed").queue == "gpu"


def test_builder_reports_every_problem_at_once():
    pipeline = (
        Pipeline("bad")
        .add("a", "noop", needs=["c"])
        .add("b", "noop", needs=["a", "ghost"])
        .add("c", "noop", needs=["b"], timeout="5 parsecs")
        .add("d", "noop", retyr=3)
    )
    with pytest.raises(InvalidPipeline) as caught:
        _ = pipeline.spec
    text = [str(p) for p in caught.value.problems]
    assert any("stage 'a'" in t and "a → b → c → a" in t for t in text)
    assert any("stage 'b'" in t and "ghost" in t for t in text)
    assert any("stage 'c'" in t and "parsecs" in t for t in text)
    assert any("stage 'd'" in t and "did you mean 'retry'" in t for t in text)
    assert all(t.startswith("Pipeline('bad'): ") for t in text)


def test_duplicate_ids_in_a_builder_name_no_missing_line():
    with pytest.raises(InvalidPipeline) as caught:
        _ = Pipeline("dup").add("a", "noop").add("a", "noop").spec
    assert "None" not in str(caught.value)


def test_add_records_only_what_was_given():
    pipeline = Pipeline("p").add("a").add("b", needs="a")
    assert pipeline.to_data() == {"name": "p", "stages": [{"id": "a"}, {"id": "b", "needs": ["a"]}]}
    assert pipeline.spec.stage("a").model_fields_set == {"id"}
    assert "a" in repr(pipeline)


def test_save_chooses_the_format_by_suffix(tmp_path):
    pipeline = Pipeline("p").add("a", "noop")
    assert pipeline.save(tmp_path / "p.json").read_text().lstrip().startswith("{")
    assert pipeline.save(tmp_path / "p.yaml").read_text().startswith("name: p")


# --- hypothesis: builders → to_yaml → text → the same spec ----------------------------------------

ids = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
# a variable named like a Python keyword (`as`, `if`) cannot be read as `variables.as` in a condition:
# validation says so, and this strategy's conditions read every variable that way
names = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))
texts = st.text(max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
durations = (
    st.floats(0, 1e6, allow_nan=False)
    | st.integers(0, 10**6)
    | st.builds(lambda n, u: f"{n}{u}", st.integers(0, 30), st.sampled_from(["ms", "s", "m", "h", "d"]))
)


@st.composite
def policies(draw):
    fields = {
        "max_attempts": st.integers(1, 10),
        "backoff": st.sampled_from(["fixed", "linear", "exponential"]),
        "delay": durations,
        "multiplier": st.floats(0.1, 10),
        "max_delay": durations,
        "jitter": st.booleans(),
        "retry_on": st.lists(st.sampled_from(["OSError", "TimeoutError", "KeyError"]), max_size=2),
        "give_up_on": st.lists(st.sampled_from(["ValueError", "TypeError"]), max_size=2),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    return {key: draw(fields[key]) for key in chosen}


@st.composite
def builders(draw):
    stage_ids = draw(st.lists(ids, min_size=1, max_size=7, unique=True))
    named = draw(st.dictionaries(names, policies(), max_size=2))
    variables = draw(st.dictionaries(names, values, max_size=3))
    top: dict = {}
    if draw(st.booleans()):
        top["version"] = draw(texts)
    if draw(st.booleans()):
        top["description"] = draw(texts)
    if draw(st.booleans()):
        top["tags"] = draw(st.lists(names, max_size=3))
    if variables:
        top["variables"] = variables
    if named:
        top["retry_policies"] = named
    if draw(st.booleans()):
        top["defaults"] = {
            k: v
            for k, v in {
                "retry": draw(
                    st.none() | policies() | (st.sampled_from(sorted(named)) if named else st.none())
                ),
                "timeout": draw(st.none() | durations),
                "queue": draw(st.none() | st.sampled_from(["cpu", "gpu", "highmem"])),
                "estimate": draw(st.none() | durations),
            }.items()
            if v is not None
        }
    if draw(st.booleans()):
        top["fail_fast"] = draw(st.booleans())
    if draw(st.booleans()):
        top["schedule"] = draw(st.sampled_from(["0 19 * * *", "*/5 * * * *"]))
    if draw(st.booleans()):
        top["webhooks"] = [{"url": "https://example.com/hook", "events": ["run_complete", "stage_error"]}]
    pipeline = Pipeline(draw(st.text(string.printable, min_size=1, max_size=20)), **top)

    order = 0
    for index, sid in enumerate(stage_ids):
        earlier = stage_ids[:index]
        fields: dict = {}
        needs = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        if needs:
            fields["needs"] = needs
        elif draw(st.booleans()):  # order-based: never earlier than a stage before it in the file
            order += draw(st.sampled_from([0, 10]))
            fields["order"] = order
        if draw(st.booleans()):
            fields["params"] = draw(st.dictionaries(texts, values, max_size=3))
        if draw(st.booleans()):
            fields["run"] = draw(st.lists(texts, min_size=1, max_size=3))
        if draw(st.booleans()):
            fields["tags"] = draw(st.lists(names, max_size=2))
        if draw(st.booleans()):
            fields["timeout"] = draw(durations)
        if draw(st.booleans()):
            fields["retry"] = draw(policies() | (st.sampled_from(sorted(named)) if named else policies()))
        if draw(st.booleans()):
            fields["resources"] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "cpu": st.integers(1, 64),
                        "memory_gb": st.floats(0.5, 512),
                        "gpu": st.integers(0, 4),
                    },
                )
            )
        if draw(st.booleans()):
            fields["queue"] = draw(st.sampled_from(["cpu", "gpu", "highmem"]))
        if draw(st.booleans()):
            fields["when"] = draw(
                st.sampled_from(
                    [
                        f"outputs[{draw(st.sampled_from(stage_ids))!r}] is not null",
                        "true",
                        "len(outputs) >= 0 and not false",
                    ]
                    + [f"variables.{v} == 1" for v in variables]
                )
            )
        if draw(st.booleans()):
            fields["critical"] = draw(st.booleans())
        if draw(st.booleans()):
            fields["fallback"] = draw(
                st.sampled_from(
                    ["last_success", {"uses": "noop"}, {"output": None}, {"output": {"rows": []}}]
                )
            )
        if draw(st.booleans()):
            fields["cache"] = draw(st.just({}) | st.builds(lambda t: {"ttl": t}, durations))
        if draw(st.booleans()):
            fields["estimate"] = draw(durations)
        fan = draw(st.sampled_from(["none", "matrix", "for_each"] if needs else ["none", "matrix"]))
        if fan == "matrix":
            fields["matrix"] = draw(
                st.dictionaries(names, st.lists(scalars, min_size=1, max_size=3), min_size=1, max_size=2)
            )
        elif fan == "for_each":
            fields["for_each"] = draw(st.sampled_from(needs))
        if fan != "none" and draw(st.booleans()):
            fields["max_concurrency"] = draw(st.integers(1, 64))
        if index == len(stage_ids) - 1 and index and draw(st.booleans()):
            fields["enabled"] = False  # nothing needs the last stage, so dropping it is always valid
        pipeline.add(
            sid, draw(st.none() | st.sampled_from(["noop", "sleep", "shell", "team.stages:fn"])), **fields
        )
    return pipeline


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(builders())
def test_any_builder_survives_yaml_and_json(pipeline):
    spec = pipeline.spec
    assert_same(Pipeline.from_text(pipeline.to_yaml(), env=NO_ENV).spec, spec)
    assert_same(Pipeline.from_text(pipeline.to_json(), "p.json", env=NO_ENV).spec, spec)
    assert_same(Pipeline.from_spec(spec).spec, spec)
    assert resolve(Pipeline.from_text(pipeline.to_yaml(), env=NO_ENV).spec) == resolve(spec)
