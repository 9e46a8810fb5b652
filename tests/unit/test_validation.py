"""Validation of pipeline files: every problem at once, with stage ids and lines; compat keys;
variables; durations; routing. (The command-line side is in test_cli.py.)"""

from __future__ import annotations

import textwrap

import pytest

from orchestration.errors import InvalidPipeline
from orchestration.graph.resolve import resolve
from orchestration.language.validation import load_pipeline_text, validate_data
from orchestration.settings import Settings

from .samples import THREE_MISTAKES


def load(text: str, **kwargs):
    return load_pipeline_text(textwrap.dedent(text), "p.yaml", env=kwargs.pop("env", {}), **kwargs)


def problems(text: str, **kwargs) -> list[str]:
    with pytest.raises(InvalidPipeline) as caught:
        load(text, **kwargs)
    return [str(p) for p in caught.value.problems]


def test_a_cycle_a_missing_dependency_and_a_bad_duration_are_reported_together():
    found = problems(THREE_MISTAKES)
    assert len(found) == 3
    assert found[0].startswith("p.yaml:5: stage 'a': dependency cycle: a → b → c → a")
    assert found[1].startswith("p.yaml:8: stage 'b': needs 'ghost', which is not a stage")
    assert found[2].startswith("p.yaml:12: stage 'c': timeout: '5 parsecs' is not a duration")


def test_many_kinds_of_mistake_in_one_file_each_with_its_stage_and_line():
    found = problems("""\
        name: x
        stages:
          - {id: a, uses: noop, critical: true, continue_on_error: true}
          - {id: b, uses: noop, needs: [b]}
          - {id: c, uses: noop, needs: [a]}
          - {id: c, uses: noop}
          - {id: d, uses: noop, for_each: a}
          - {id: e, uses: noop, retry: nosuch}
          - {id: f, uses: noop, when: "outputs.nope"}
          - {id: g, uses: noop, when: "1 +"}
          - {id: h, uses: noop, needs: [a], matrix: {lr: [1]}, for_each: a}
          - {id: i, uses: noop, max_concurrency: 3}
        """)
    expected = [
        ("p.yaml:3: stage 'a'", "either 'critical' or 'continue_on_error'"),
        ("p.yaml:4: stage 'b'", "needs itself"),
        ("p.yaml:6: stage 'c'", "duplicate stage id (first defined"),
        ("p.yaml:7: stage 'd'", "for_each 'a' names no upstream stage"),
        ("p.yaml:8: stage 'e'", "retry names policy 'nosuch'"),
        ("p.yaml:9: stage 'f'", "there is no stage 'nope'"),
        ("p.yaml:10: stage 'g'", "is not a valid expression"),
        ("p.yaml:11: stage 'h'", "either matrix or for_each"),
        ("p.yaml:12: stage 'i'", "max_concurrency applies only"),
    ]
    assert len(found) == len(expected), found
    for (where, what), text in zip(expected, found, strict=True):
        assert text.startswith(where) and what in text, text


def test_unknown_keys_suggest_the_closest_field():
    found = problems("""\
        name: typos
        fail_fats: true
        stages:
          - {id: a, uses: noop, dependson: [b], parmas: {}}
          - {id: b, uses: noop}
        """)
    assert "p.yaml:2: unknown key 'fail_fats' (did you mean 'fail_fast'?)" in found
    assert "p.yaml:4: stage 'a': unknown key 'parmas' (did you mean 'params'?)" in found
    assert any(t.startswith("p.yaml:4: stage 'a': unknown key 'dependson'") for t in found)


def test_every_cycle_is_a_path():
    found = problems("""\
        name: cycles
        stages:
          - {id: a, needs: [b]}
          - {id: b, needs: [a]}
          - {id: x, needs: [z]}
          - {id: y, needs: [x]}
          - {id: z, needs: [y]}
          - {id: self, needs: [self]}
        """)
    cycles = [t.split("dependency cycle: ")[1] for t in found if "dependency cycle" in t]
    assert cycles == ["a → b → a", "x → y → z → x"]
    assert any("stage 'self': needs itself" in t for t in found)


def test_conditions_cannot_run_code():
    for condition in (
        "__import__('os').system('x')",
        "item.__class__",
        "open('/etc/passwd')",
        "[x for x in outputs]",
        "lambda: 1",
    ):
        found = problems(f"""\
            name: evil
            stages:
              - id: a
                uses: noop
                when: "{condition}"
            """)
        assert found and all(t.startswith("p.yaml:5: stage 'a': ") for t in found), (condition, found)


def test_resources_no_configured_queue_serves():
    found = problems(
        """\
        name: routed
        stages:
          - {id: a, uses: noop, resources: {gpu: 1}}
          - {id: b, uses: noop, queue: special}
          - {id: c, uses: noop, resources: {memory_gb: 4}}
        """,
        settings=Settings(queues=("cpu",)),
    )
    assert len(found) == 2
    assert found[0].startswith("p.yaml:3: stage 'a': resources {'gpu': 1} (queue 'gpu') is not served")
    assert found[1].startswith("p.yaml:4: stage 'b': queue 'special' is not served")


def test_resources_pick_the_queue():
    spec = load("""\
        name: routed
        defaults: {queue: cpu}
        stages:
          - {id: small, uses: noop, resources: {memory_gb: 4}}
          - {id: big, uses: noop, resources: {memory_gb: 32}}
          - {id: gpu, uses: noop, resources: {gpu: 1, memory_gb: 64}}
          - {id: pinned, uses: noop, queue: highmem}
          - {id: plain, uses: noop}
        """)
    queues = {n.id: n.queue for n in resolve(spec).nodes}
    assert queues == {"small": "cpu", "big": "highmem", "gpu": "gpu", "pinned": "highmem", "plain": "cpu"}


@pytest.mark.parametrize(
    "written, seconds",
    [
        ("90", 90),
        ("0.5", 0.5),
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1d", 86400),
        ("1w", 604800),
    ],
)
def test_durations(written, seconds):
    spec = load(f"""\
        name: d
        stages:
          - {{id: a, uses: noop, timeout: {written}}}
        """)
    assert spec.stage("a").timeout == seconds


@pytest.mark.parametrize("written", ["5 parsecs", "-1", "1x", "m5", "true", "[1]"])
def test_bad_durations_are_reported_with_their_line(written):
    found = problems(f"""\
        name: d
        stages:
          - id: a
            uses: noop
            timeout: {written}
          - {{id: b, uses: noop}}
        """)
    assert len(found) == 1 and found[0].startswith("p.yaml:5: stage 'a': timeout: "), found


def test_a_single_invalid_stage_is_one_problem():
    found = problems("""\
        name: d
        stages:
          - {id: a, uses: noop, timeout: 5 parsecs}
        """)
    assert len(found) == 1, found


def test_variables_read_the_environment_and_set_overrides_them():
    text = """\
        name: vars
        variables:
          mode: ${MODE:-weekly}
          root: ${ROOT:-./out}
        stages:
          - id: a
            uses: noop
            params: {mode: "${mode}", path: "${root}/${mode}", days: "${days:-7}", literal: "$${mode}"}
            when: "variables.mode == 'weekly'"
        """
    spec = load(text)
    assert spec.variables == {"mode": "weekly", "root": "./out"}
    assert spec.stage("a").params == {
        "mode": "weekly",
        "path": "./out/weekly",
        "days": "7",
        "literal": "${mode}",
    }
    assert spec.stage("a").when == "variables.mode == 'weekly'"  # conditions are not interpolated
    spec = load(text, env={"MODE": "daily"}, overrides={"root": "/data", "days": 30})
    assert spec.stage("a").params == {
        "mode": "daily",
        "path": "/data/daily",
        "days": 30,
        "literal": "${mode}",
    }


def test_unresolved_references_are_all_reported():
    found = problems("""\
        name: vars
        variables: {a: "${NOT_SET}"}
        stages:
          - {id: a, uses: noop, params: {x: "${nope}"}}
        """)
    assert found[0].startswith("p.yaml:2: variables.a: ${NOT_SET} is not set in the environment")
    assert found[1].startswith("p.yaml:4: stage 'a': params.x: ${nope} is not a variable")


def test_order_based_keys_map_onto_the_canonical_fields():
    spec = load("""\
        metadata: {name: legacy, version: 2, author: me, tags: [old]}
        error_handling: {continue_on_error: true, retry_count: 2, retry_delay: 3}
        stages:
          - id: a
            order: 1
            parameters: {k: 1}
            condition: "true"
            timeout_seconds: 5
            max_retries: 0
            continue_on_error: true
          - {id: b, order: 2, retry_delay_seconds: 7}
        """)
    assert (spec.name, spec.version, spec.author, spec.tags) == ("legacy", "2", "me", ("old",))
    assert spec.fail_fast is False
    assert spec.defaults.retry.model_dump(exclude_unset=True) == {"max_attempts": 3, "delay": 3}
    a = spec.stage("a")
    assert (a.params, a.when, a.timeout, a.critical) == ({"k": 1}, "true", 5, False)
    assert a.retry.model_dump(exclude_unset=True) == {"max_attempts": 1}
    graph = resolve(spec)
    assert graph.node("a").retry == {"max_attempts": 1, "delay": 3}
    assert graph.node("b").retry == {"max_attempts": 3, "delay": 7}
    assert graph.node("b").needs == ("a",)


def test_top_level_retry_block_becomes_the_default_policy():
    spec = load("""\
        name: x
        retry: {max_retries: 2, delay_seconds: 1, exponential_backoff: false, max_delay_seconds: 9}
        stages:
          - {id: a, uses: noop}
        """)
    assert resolve(spec).node("a").retry == {
        "max_attempts": 3,
        "delay": 1,
        "backoff": "fixed",
        "max_delay": 9,
    }


def test_a_disabled_stage_passes_its_needs_on():
    graph = resolve(
        load("""\
        name: x
        stages:
          - {id: a, uses: noop}
          - {id: b, uses: noop, needs: [a], enabled: false}
          - {id: c, uses: noop, needs: [b]}
        """)
    )
    assert [n.id for n in graph.nodes] == ["a", "c"]
    assert graph.node("c").needs == ("a",)


def test_a_stage_without_uses_runs_the_type_named_by_its_id():
    spec = load("""\
        name: x
        stages:
          - {id: market.fetch}
          - {id: cmd, run: "echo 'two words'"}
        """)
    assert spec.stage("market.fetch").type_name == "market.fetch"
    assert spec.stage("cmd").type_name == "shell" and spec.stage("cmd").run == ("echo", "two words")


def test_data_without_lines_is_reported_without_lines():
    with pytest.raises(InvalidPipeline) as caught:
        validate_data({"name": "x", "stages": [{"id": "a", "needs": ["zz"]}]}, source="builder")
    assert [str(p) for p in caught.value.problems] == [
        "builder: stage 'a': needs 'zz', which is not a stage in this pipeline"
    ]
