"""`plan` against a live fleet: the retry policy in force and cache hits."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from .conftest import ROOT, pipeline


def _plan(cluster, tmp_path, data: dict) -> dict:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": cluster.server.url}
    done = subprocess.run(
        [sys.executable, "-m", "orchestration", "plan", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {s["id"]: s for s in json.loads(done.stdout)["stages"]}


def test_plan_shows_the_policy_in_force_and_cache_hits(cluster, tmp_path):
    def data(value: int) -> dict:
        return pipeline(
            "plan-live",
            {"id": "calc", "uses": "test.versioned", "params": {"value": value}, "cache": {"ttl": "1h"}},
            {"id": "typed", "uses": "test.policy_b", "needs": ["calc"]},
            {"id": "overridden", "uses": "test.policy_b", "needs": ["calc"], "retry": {"max_attempts": 1}},
        )

    before = _plan(cluster, tmp_path, data(7))
    assert before["calc"]["cache"] == "miss"
    assert before["typed"]["retry"]["max_attempts"] == 4  # the type's registered policy
    assert before["typed"]["retry"]["delay"] == 0.05
    assert before["overridden"]["retry"]["max_attempts"] == 1  # the file beats the type
    assert before["typed"]["cache"] is None

    cluster.run(data(7))
    after = _plan(cluster, tmp_path, data(7))
    assert after["calc"]["cache"] == "hit"
    assert _plan(cluster, tmp_path, data(8))["calc"]["cache"] == "miss"
