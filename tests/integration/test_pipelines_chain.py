"""The chain of pipelines: the four pipelines of examples/chain run in dependency order, each as its
own run, stopping at the first failure; `chain resume` after a fix reruns only the failed pipeline
and the ones after it. Also: `pipelines graph` draws the four and their assets, `assets` lists what
each run provided, and the run page lists the chain's runs together. Real Redis, real workers."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
import yaml

from orchestration.cli.dashboard import serve

from .conftest import ROOT
from .pipelines_support import FAILING, chordflow, chordflow_json, plain_worker, runs_of

EXAMPLES = ROOT / "examples" / "chain"
CHAIN = ["data-daily", "scenarios-weekly", "metrics-weekly", "assessment-weekly"]
ASSETS = ["market_data", "scenario_definitions", "technical_indicators", "backtest_results"]


@pytest.fixture(scope="module")
def fleet(bare_cluster):
    plain_worker(bare_cluster, "chain", concurrency=2)
    return bare_cluster


def statuses(cluster) -> dict[str, list[str]]:
    return {name: [r["status"] for r in runs_of(cluster, name)] for name in CHAIN}


def test_a_chain_of_four_runs_in_order_and_resumes_from_the_failed_one(fleet, tmp_path):
    # Given the four pipelines, the third broken
    broken = yaml.safe_load((EXAMPLES / "metrics-weekly.yaml").read_text())
    broken["stages"] = FAILING
    (tmp_path / "metrics-broken.yaml").write_text(yaml.safe_dump(broken))
    for name in CHAIN:
        path = tmp_path / "metrics-broken.yaml" if name == "metrics-weekly" else EXAMPLES / f"{name}.yaml"
        assert chordflow(fleet, "pipelines", "add", path).returncode == 0

    # When the chain runs (named out of order: it orders them by their links)
    first = chordflow(
        fleet, "chain", "run", "assessment-weekly", "metrics-weekly", "data-daily", "scenarios-weekly"
    )

    # Then it ran them in order, each as its own run, and stopped at the failure
    assert first.returncode == 1, first.stdout + first.stderr
    chain_id = re.search(r"chain (c[0-9a-f]+)", first.stdout).group(1)
    assert " → ".join(CHAIN) in first.stdout
    assert f"chain {chain_id} failed at metrics-weekly" in first.stdout
    time.sleep(2)  # no trigger among the chain's own pipelines adds a run
    assert statuses(fleet) == {
        "data-daily": ["succeeded"],
        "scenarios-weekly": ["succeeded"],
        "metrics-weekly": ["failed"],
        "assessment-weekly": [],
    }
    kept = {name: [r["run_id"] for r in runs_of(fleet, name)] for name in CHAIN}
    started = [float(runs_of(fleet, name)[0]["created_at"]) for name in CHAIN[:3]]
    assert started == sorted(started)

    # When the third is fixed and the chain resumed
    assert chordflow(fleet, "pipelines", "add", EXAMPLES / "metrics-weekly.yaml").returncode == 0
    resumed = chordflow(fleet, "chain", "resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # Then only the third and the fourth ran again; the first two runs were reused
    assert f"data-daily: run {kept['data-daily'][0]} reused" in resumed.stdout
    assert f"scenarios-weekly: run {kept['scenarios-weekly'][0]} reused" in resumed.stdout
    time.sleep(2)
    assert statuses(fleet) == {
        "data-daily": ["succeeded"],
        "scenarios-weekly": ["succeeded"],
        "metrics-weekly": ["failed", "succeeded"],
        "assessment-weekly": ["succeeded"],
    }
    metrics, assessment = runs_of(fleet, "metrics-weekly")[1], runs_of(fleet, "assessment-weekly")[0]
    assert float(metrics["created_at"]) < float(assessment["created_at"])
    chain = chordflow_json(fleet, "chain", "status", chain_id)
    assert chain["status"] == "succeeded" and chain["pipelines"] == CHAIN
    assert [s["status"] for s in chain["steps"]] == ["succeeded"] * 4

    # The run page lists the chain's runs together
    server = serve(fleet.settings, port=0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/runs/{assessment['run_id']}"
        with urllib.request.urlopen(url, timeout=10) as response:
            page = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
    assert page["chain"]["chain_id"] == chain_id
    assert [(r["pipeline"], r["run_id"], r["status"]) for r in page["chain"]["runs"]] == [
        ("data-daily", kept["data-daily"][0], "succeeded"),
        ("scenarios-weekly", kept["scenarios-weekly"][0], "succeeded"),
        ("metrics-weekly", metrics["run_id"], "succeeded"),
        ("assessment-weekly", assessment["run_id"], "succeeded"),
    ]


def test_chain_from_follows_the_triggers(fleet):
    done = chordflow(fleet, "chain", "run", "--from", "data-daily")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{' → '.join(CHAIN)}" in done.stdout
    order = [line.split(":")[0] for line in done.stdout.splitlines() if line.endswith(" succeeded")]
    assert order == CHAIN


def test_the_graph_of_pipelines_and_assets(fleet):
    mermaid = chordflow(fleet, "pipelines", "graph").stdout
    dot = chordflow(fleet, "pipelines", "graph", "--format", "dot").stdout
    assert mermaid.startswith("%% pipelines and assets\nflowchart LR") and dot.startswith(
        'digraph "pipelines"'
    )
    for name in CHAIN + ASSETS:
        assert name in mermaid and name in dot
    assert '-.->|"on success"|' in mermaid and "style=dashed" in dot  # triggers
    assert "depends_on ≤ 26h" in mermaid and "shape=cylinder" in dot  # depends_on, assets

    assets = {row["asset"]: row for row in chordflow_json(fleet, "assets")}
    assert assets["market_data"]["provided_by"] == ["data-daily"]
    assert assets["market_data"]["required_by"] == ["metrics-weekly", "scenarios-weekly"]
    assert assets["market_data"]["last"]["run_id"] == runs_of(fleet, "data-daily")[-1]["run_id"]
    rows = {row["pipeline"]: row for row in chordflow_json(fleet, "pipelines")}
    assert {name: rows[name]["freshness"] for name in CHAIN} == dict.fromkeys(CHAIN, "fresh")
    assert rows["scenarios-weekly"]["provides"] == ["scenario_definitions"]
