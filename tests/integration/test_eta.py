"""The ETA counts down: a run of 6 stages whose durations one earlier run recorded shows, while
it runs, a time left within 25% of the real one (after its first 20%), that never grows by more
than the time that passed. Read from `chordflow watch --json` (a real process: an `eta_s` at each
stage event) and `chordflow status --json`, against real workers."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import datetime

from orchestration.language.validation import validate_data

from .conftest import ROOT, pipeline

CHORDFLOW = [sys.executable, "-m", "orchestration"]


def six_stages() -> dict:
    # a → (b, c) → d → e → f; the critical path a, b, d, e, f takes 6.5 s of sleeping
    def stage(sid: str, seconds: float, *needs: str) -> dict:
        return {"id": sid, "uses": "test.record", "params": {"seconds": seconds}, "needs": list(needs)}

    return pipeline(
        "eta-six",
        stage("a", 1.0),
        stage("b", 2.0, "a"),
        stage("c", 0.5, "a"),
        stage("d", 1.5, "b", "c"),
        stage("e", 1.0, "d"),
        stage("f", 1.0, "e"),
    )


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORDFLOW_")}
    return {**env, "PYTHONPATH": str(ROOT), "CHORDFLOW_REDIS_URL": url}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_the_eta_counts_down_within_a_quarter_of_the_real_time_left(cluster):
    spec = validate_data(six_stages())
    # Given one earlier run: the history the estimates come from
    assert cluster.client.submit(spec).wait(timeout=60).status == "succeeded"

    # When a second run is followed by `watch --json` and read by `status --json` meanwhile
    handle = cluster.client.submit(spec)
    env = _env(cluster.server.url)
    watcher = subprocess.Popen(
        [*CHORDFLOW, "watch", handle.run_id, "--json"], env=env, stdout=subprocess.PIPE, text=True
    )
    polled: list[tuple[float, float | None]] = []
    while watcher.poll() is None:
        done = subprocess.run(
            [*CHORDFLOW, "status", handle.run_id, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        polled.append((_epoch(status["read_at"]), status["eta_s"]))
    out, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0

    # Then every ETA shown while the run went on is close to the time it really had left
    lines = [json.loads(line) for line in out.splitlines()]
    final = lines[-1]["status"]
    assert final["status"] == "succeeded"
    created, finished = _epoch(final["created_at"]), _epoch(final["finished_at"])
    shown = [(_epoch(line["read_at"]), line["eta_s"]) for line in lines if "eta_s" in line]
    shown += [(t, left) for t, left in polled if t < finished]
    shown = sorted((t, left) for t, left in shown if left is not None)
    assert len(shown) >= 6, shown
    checked = 0
    for t, left in shown:
        real = finished - t
        if t - created >= 0.2 * (finished - created) and real > 0:
            checked += 1
            print(
                f"at {t - created:5.2f}s ETA {left:5.2f}s real {real:5.2f}s error {abs(left - real) / real:4.0%}"
            )
            # 25%, and an eighth of a second in the last half second (the time a read takes)
            assert abs(left - real) <= max(0.25 * real, 0.125), (t - created, left, real, shown)
    assert checked >= 4, shown
    # and it never grows by more than the time that passed between two readings
    for (t1, left1), (t2, left2) in itertools.pairwise(shown):
        assert left2 - left1 <= (t2 - t1) + 0.05, ((t1, left1), (t2, left2), shown)
