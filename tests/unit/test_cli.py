"""The command line: validate, plan, graph, schema, templates, init; exit codes; hostile files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from orchestration.cli.files import available_templates, describe_retry
from orchestration.cli.main import cli, main
from orchestration.language.options import RetryPolicy

from .samples import THREE_MISTAKES

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MARKET_EXAMPLE = EXAMPLES / "market-weekly.yaml"
ORDER_BASED = EXAMPLES / "order-based.yaml"
TEMPLATES = available_templates()
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # the subprocesses import this checkout


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def longest_path_s(stages: list[dict]) -> float:
    """Brute force: the longest chain of estimates through the planned graph."""
    finish: dict[str, float] = {}
    for stage in stages:  # plan lists stages in topological order
        finish[stage["id"]] = stage["estimate_s"] + max((finish[n] for n in stage["needs"]), default=0.0)
    return max(finish.values())


def assert_critical_path_is_correct(plan: dict) -> None:
    by_id = {s["id"]: s for s in plan["stages"]}
    path = plan["critical_path"]
    assert path, "a non-empty pipeline has a critical path"
    assert by_id[path[0]]["needs"] == [] or all(n not in by_id for n in by_id[path[0]]["needs"])
    for need, stage in pairwise(path):
        assert need in by_id[stage]["needs"], f"{need} → {stage} is not an edge"
    assert not any(path[-1] in s["needs"] for s in plan["stages"]), "the path ends at a sink"
    assert sum(by_id[s]["estimate_s"] for s in path) == pytest.approx(plan["makespan_s"])
    assert plan["makespan_s"] == pytest.approx(longest_path_s(plan["stages"]))
    assert {s["id"] for s in plan["stages"] if s["on_critical_path"]} == set(path)


# --- the market-weekly example ------------------------------------------------------------------


def test_design_example_validates_and_lists_unverified_types():
    result = run("validate", MARKET_EXAMPLE)
    assert result.exit_code == 0, result.output
    assert "ok: 5 stages" in result.stdout
    for type_name in (
        "market.stages:fetch_data",
        "market.stages:compute_metrics",
        "market.stages:train",
        "market.stages:report",
    ):
        assert type_name in result.stdout
    assert "  shell " not in result.stdout  # built in, so verified


def test_design_example_plan_routes_by_resources_and_marks_a_correct_critical_path():
    plan = run_json("plan", MARKET_EXAMPLE)
    stages = {s["id"]: s for s in plan["stages"]}
    assert plan["pipeline"] == "market-weekly" and plan["version"] == "1.2.0"
    assert stages["metrics"]["queue"] == "highmem"
    assert stages["train"]["queue"] == "gpu"
    assert stages["train"]["matrix_instances"] == 4
    assert {sid: s["queue"] for sid, s in stages.items() if sid not in ("metrics", "train")} == {
        "data": "cpu",
        "scenarios": "cpu",
        "report": "cpu",
    }
    assert stages["metrics"]["for_each"] == "scenarios"
    assert stages["scenarios"]["timeout_s"] == 600 and stages["data"]["timeout_s"] == 3600
    assert stages["data"]["retry"]["max_attempts"] == 5 and stages["data"]["retry"]["jitter"] is True
    assert stages["report"]["retry"]["max_attempts"] == 3 and stages["report"]["critical"] is False
    assert plan["critical_path"] == ["data", "scenarios", "metrics", "train", "report"]
    assert_critical_path_is_correct(plan)


def test_plan_table_shows_order_queues_policies_and_makespan():
    result = run("plan", MARKET_EXAMPLE)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("highmem", "gpu", "matrix ×4", "for_each scenarios ≤16", "3× exponential 2s→1m", "10m"):
        assert text in out
    assert "estimated makespan: 5s (critical path: data → scenarios → metrics → train → report)" in out


def test_critical_path_of_a_branching_pipeline(tmp_path):
    path = write(
        tmp_path,
        """
        name: branches
        stages:
          - {id: a, uses: noop, estimate: 1}
          - {id: slow, uses: noop, needs: [a], estimate: 5}
          - {id: fast, uses: noop, needs: [a], estimate: 1}
          - {id: join, uses: noop, needs: [fast, slow], estimate: 1}
          - {id: side, uses: noop, estimate: 2}
    """,
    )
    plan = run_json("plan", path)
    assert plan["critical_path"] == ["a", "slow", "join"]
    assert plan["makespan_s"] == 7
    assert_critical_path_is_correct(plan)
    assert "critical path: a → slow → join" in run("plan", path).stdout


# --- order-based files -------------------------------------------------------------------------


def test_order_based_file_plans_as_a_chain_by_order():
    plan = run_json("plan", ORDER_BASED)
    stages = {s["id"]: s for s in plan["stages"]}
    assert "legacy_export" not in stages  # enabled: false
    assert [s["id"] for s in plan["stages"]] == [
        "setup",
        "validate_input",
        "fetch_prices",
        "compute",
        "notify",
    ]
    assert stages["validate_input"]["level"] == stages["fetch_prices"]["level"] == 1  # equal order: parallel
    assert stages["validate_input"]["needs"] == stages["fetch_prices"]["needs"] == ["setup"]
    assert stages["compute"]["needs"] == ["validate_input", "fetch_prices"]
    assert [stages[s]["level"] for s in ("setup", "compute", "notify")] == [0, 2, 3]
    assert stages["notify"]["critical"] is False  # continue_on_error: true
    assert stages["fetch_prices"]["retry"]["max_attempts"] == 4  # max_retries: 3
    assert stages["fetch_prices"]["retry"]["delay"] == 10
    assert stages["setup"]["retry"]["max_attempts"] == 2  # error_handling.retry_count: 1
    assert stages["fetch_prices"]["timeout_s"] == 300
    assert_critical_path_is_correct(plan)


def test_order_not_file_position_decides(tmp_path):
    path = write(
        tmp_path,
        """
        name: shuffled
        stages:
          - {id: last, uses: noop, order: 30}
          - {id: first, uses: noop, order: 10}
          - {id: off, uses: noop, order: 15, enabled: false}
          - {id: middle_a, uses: noop, order: 20}
          - {id: middle_b, uses: noop, order: 20}
    """,
    )
    stages = {s["id"]: s for s in run_json("plan", path)["stages"]}
    assert set(stages) == {"first", "middle_a", "middle_b", "last"}
    assert stages["middle_a"]["needs"] == stages["middle_b"]["needs"] == ["first"]
    assert stages["middle_a"]["level"] == stages["middle_b"]["level"] == 1
    assert stages["last"]["needs"] == ["middle_a", "middle_b"] and stages["last"]["level"] == 2


# --- reporting problems ------------------------------------------------------------------------


def test_three_mistakes_are_all_reported_with_stage_and_line(tmp_path):
    path = write(tmp_path, THREE_MISTAKES, "broken.yaml")
    result = run("validate", path)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert "Traceback" not in result.output
    cycle = [line for line in lines if "cycle" in line]
    missing = [line for line in lines if "ghost" in line]
    duration = [line for line in lines if "parsecs" in line]
    assert len(cycle) == len(missing) == len(duration) == 1, result.output
    assert cycle[0].startswith(f"{path}:5: stage 'a': ") and "a → b → c → a" in cycle[0]
    assert missing[0].startswith(f"{path}:8: stage 'b': ")
    assert duration[0].startswith(f"{path}:12: stage 'c': ")


def test_main_returns_the_exit_codes(tmp_path, capsys):
    broken = write(tmp_path, THREE_MISTAKES, "broken.yaml")
    assert main(["validate", str(broken)]) == 2
    assert "3 problems" in capsys.readouterr().err
    assert main(["validate", str(MARKET_EXAMPLE)]) == 0
    assert main(["no-such-command"]) == 2
    assert main(["plan"]) == 2  # missing FILE
    assert main(["--help"]) == 0
    assert main(["plan", str(MARKET_EXAMPLE), "--select", "nothing_like_it"]) == 2
    assert main(["validate", str(MARKET_EXAMPLE), "--set", "not an assignment"]) == 2
    target = tmp_path / "exists.yaml"
    target.write_text("keep me")
    assert main(["init", "--template", "daily-chain", str(target)]) == 2  # invalid input: it exists
    assert "--force" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_json_output_of_an_invalid_file_lists_problems(tmp_path):
    result = run("validate", write(tmp_path, THREE_MISTAKES), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert {(p["stage_id"], p["line"]) for p in report["problems"]} == {("a", 5), ("b", 8), ("c", 12)}


def test_unknown_keys_get_did_you_mean(tmp_path):
    path = write(
        tmp_path,
        """
        name: typos
        varaibles: {mode: weekly}
        stages:
          - id: a
            uses: noop
            neds: [b]
            timout: 5m
          - id: b
            uses: noop
    """,
    )
    result = run("validate", path)
    assert result.exit_code == 2
    out = result.output
    assert "unknown key 'varaibles' (did you mean 'variables'?)" in out
    assert "stage 'a': unknown key 'neds' (did you mean 'needs'?)" in out
    assert "stage 'a': unknown key 'timout' (did you mean 'timeout'?)" in out


def test_every_cycle_is_printed_as_a_path(tmp_path):
    path = write(
        tmp_path,
        """
        name: two-cycles
        stages:
          - {id: a, uses: noop, needs: [b]}
          - {id: b, uses: noop, needs: [a]}
          - {id: ok, uses: noop}
          - {id: x, uses: noop, needs: [z]}
          - {id: y, uses: noop, needs: [x]}
          - {id: z, uses: noop, needs: [y, ok]}
    """,
    )
    result = run("validate", path)
    assert result.exit_code == 2
    cycles = [line for line in result.output.splitlines() if "dependency cycle" in line]
    assert len(cycles) == 2
    assert cycles[0].endswith("a → b → a")
    assert cycles[1].endswith("x → y → z → x")


def test_set_overrides_variables(tmp_path):
    path = write(
        tmp_path,
        """
        name: routed
        variables: {lane: cpu}
        stages:
          - {id: a, uses: noop, queue: "${lane}"}
    """,
    )
    assert run_json("plan", path)["stages"][0]["queue"] == "cpu"
    assert run_json("plan", path, "--set", "lane=gpu")["stages"][0]["queue"] == "gpu"
    result = run("plan", path, "--set", "lane=nowhere")
    assert result.exit_code == 2 and "not served by any configured queue" in result.output


def test_select_and_only(tmp_path):
    plan = run_json("plan", MARKET_EXAMPLE, "--select", "train")
    assert [s["id"] for s in plan["stages"]] == ["data", "scenarios", "metrics", "train"]
    plan = run_json("plan", MARKET_EXAMPLE, "--select", "train", "--only")
    assert [s["id"] for s in plan["stages"]] == ["train"]


def test_problem_text_with_brackets_is_printed_verbatim(tmp_path):
    path = write(
        tmp_path,
        """
        name: markup
        stages:
          - {id: a, uses: noop, needs: "[bold]b[/bold]"}
    """,
    )
    result = run("validate", path)
    assert result.exit_code == 2
    assert "needs '[bold]b[/bold]'" in result.output


# --- hostile input (subprocesses, each within 10 s) -------------------------------------------------


def _billion_laughs() -> str:
    lines = ["name: bomb", 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines.append("stages: [{id: x, uses: noop}]")
    return "\n".join(lines) + "\n"


def _huge(path: Path) -> None:
    with path.open("w", encoding="utf-8") as file:
        file.write("name: huge\nstages:\n")
        chunk = "".join(f"  - {{id: s{i}, uses: noop}}\n" for i in range(20_000))
        while file.tell() < 50 * 1024 * 1024:
            file.write(chunk)


HOSTILE = {
    "alias-bomb": (_billion_laughs, "aliases expand too much"),
    "50-megabytes": (_huge, "the limit is 10 MiB"),
    "deep-nesting": (lambda: "name: deep\nstages: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested more than"),
    "non-utf8": (lambda: b"name: bad\nstages:\n  - id: a\n    uses: \xff\xfe\n", "not UTF-8"),
    "python-tag": (
        lambda: (
            "name: evil\nstages:\n  - id: a\n    uses: noop\n"
            "    params: !!python/object/apply:os.system ['x']\n"
        ),
        "is not allowed",
    ),
    "code-in-condition": (
        lambda: (
            "name: evil\nstages:\n  - id: a\n    uses: noop\n    when: \"__import__('os').system('x')\"\n"
        ),
        "__import__",
    ),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_file_is_refused_quickly_and_cleanly(tmp_path, kind):
    make, expected = HOSTILE[kind]
    path = tmp_path / f"{kind}.yaml"
    if kind == "50-megabytes":
        make(path)
    else:
        content = make()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    marker = tmp_path / "x"  # what os.system('x') would have needed to run
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration", "validate", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=10,
        cwd=tmp_path,
        env=ENV,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    assert expected in output
    assert str(path) in output
    assert not marker.exists()


def test_console_script_entry_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration", "validate", str(MARKET_EXAMPLE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok: 5 stages" in proc.stdout


# --- templates, init, schema, graph ------------------------------------------------------------------


def test_the_four_design_templates_are_listed():
    listed = run_json("templates")
    names = {t["name"] for t in listed}
    assert {"daily-chain", "analysis-dag", "script-playbook", "document-processing"} <= names
    assert all(t["description"] for t in listed)
    result = run("templates")
    assert result.exit_code == 0 and "daily-chain" in result.stdout


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_is_written_by_init_and_validates_with_builtin_types_only(tmp_path, name):
    target = tmp_path / "sub" / "pipeline.yaml"
    result = run("init", "--template", name, target)
    assert result.exit_code == 0, result.output
    assert target.read_text() == TEMPLATES[name][1].read_text()
    assert target.read_text().startswith(f"# {name}: ")
    report = run_json("validate", target)
    assert report["ok"] is True
    assert report["unverified_types"] == {}  # only shell, noop, sleep: runs on any worker
    refused = run("init", "--template", name, target)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert run("init", "--template", name, target, "--force").exit_code == 0


def test_init_defaults_to_pipeline_yaml_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("init", "--template", "daily-chain")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pipeline.yaml").exists()
    assert run("init", "--template", "no-such-template").exit_code == 2


def test_templates_have_the_design_shapes():
    daily = run_json("plan", TEMPLATES["daily-chain"][1])
    assert [s["id"] for s in daily["stages"]] == ["data", "scenarios", "metrics", "assessment"]
    assert all(s["level"] == i for i, s in enumerate(daily["stages"]))
    assert 'schedule: "0 19 * * *"' in TEMPLATES["daily-chain"][1].read_text()

    dag = {s["id"]: s for s in run_json("plan", TEMPLATES["analysis-dag"][1])["stages"]}
    fan = [s for s in dag.values() if s["for_each"]]
    assert fan and all(s["for_each"] in s["needs"] for s in fan)
    assert any(len(s["needs"]) >= 2 for s in dag.values())  # a join
    assert len({s["level"] for s in dag.values()}) < len(dag)  # parallel branches

    docs = run_json("plan", TEMPLATES["document-processing"][1])
    assert [s["id"] for s in docs["stages"]] == [
        "ingest",
        "parse",
        "normalize",
        "extract",
        "embed",
        "build_graph",
    ]
    assert {s["id"]: s["queue"] for s in docs["stages"]}["embed"] == "gpu"

    playbook = run_json("plan", TEMPLATES["script-playbook"][1])["stages"]
    assert all(s["type"] == "shell" or s["type"] == "noop" for s in playbook)
    assert any(not s["critical"] for s in playbook) and all(s["timeout_s"] for s in playbook[:4])


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(example):
    result = run("validate", example)
    assert result.exit_code == 0, result.output


def test_quickstart_has_a_fan_out_a_join_and_a_shell_stage():
    stages = run_json("plan", EXAMPLES / "quickstart.yaml")["stages"]
    assert any(s["for_each"] for s in stages)
    assert any(len(s["needs"]) >= 2 for s in stages)
    assert any(s["type"] == "shell" for s in stages)
    assert run_json("validate", EXAMPLES / "quickstart.yaml")["unverified_types"] == {}


def test_schema_is_valid_json_schema():
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    Draft202012Validator.check_schema(schema)
    assert "stages" in schema["properties"]


@pytest.mark.parametrize("fmt, head", [("mermaid", "flowchart LR"), ("dot", "digraph ")])
def test_graph_prints_mermaid_and_dot(fmt, head):
    result = run("graph", MARKET_EXAMPLE, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert head in result.stdout
    for stage_id in ("data", "scenarios", "metrics", "train", "report"):
        assert stage_id in result.stdout
    assert "matrix ×4" in result.stdout


def test_graph_of_an_invalid_file_exits_2(tmp_path):
    result = run("graph", write(tmp_path, THREE_MISTAKES))
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "policy, text",
    [
        (RetryPolicy(), "none"),
        (RetryPolicy(max_attempts=3, backoff="exponential", delay=2, max_delay=60), "3× exponential 2s→1m"),
        (RetryPolicy(max_attempts=3, delay=2), "3× exponential 2s ×2"),
        (RetryPolicy(max_attempts=2, backoff="fixed", delay=5), "2× fixed 5s"),
        (
            RetryPolicy(
                max_attempts=4, backoff="linear", delay=1, max_delay=10, jitter=True, retry_on=["OSError"]
            ),
            "4× linear 1s→10s jitter on OSError",
        ),
    ],
)
def test_retry_policies_are_described(policy, text):
    assert describe_retry(policy) == text


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_the_exported_schema(example):
    from orchestration.language.loader import load_document

    schema = json.loads(run("schema").stdout)
    errors = list(Draft202012Validator(schema).iter_errors(load_document(example, env={}).data))
    assert not errors, [e.message for e in errors]
