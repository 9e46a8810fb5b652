"""The workload of a failover test: five pipelines that take every path a commit can take.

- `chain30`: 30 stages one after another (the commit that makes the next stage ready);
- `lattice20`: 5 layers of 4, each stage needing two of the layer before (the counter join);
- `fanout200`: a list of 200 items run in chunks (`fanout_chunk`), then a stage reading all 200;
- `fail_once`: one stage retried after a short countdown (a broker ETA) and one after a delay
  longer than the delay-set threshold the harness gives its workers (the Redis delay set);
- `pool1`: four stages in a pool of size 1 (the limits' admission and release in the commits).
"""

from __future__ import annotations

from typing import Any

from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data

#: The workers' CHORDFLOW_DELAY_SET_THRESHOLD_S: retry delays above it wait in the delay set.
DELAY_SET_THRESHOLD_S = 1.0


def _step(sid: str, needs: list[str] | None = None, seconds: float = 0.05, **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "uses": "ha.step",
        "params": {"seconds": seconds},
        **({"needs": needs} if needs else {}),
        **extra,
    }


def chain30() -> dict[str, Any]:
    return {
        "name": "ha-chain30",
        "stages": [_step(f"c{i:02d}", [f"c{i - 1:02d}"] if i else None) for i in range(30)],
    }


def lattice20(layers: int = 5, width: int = 4) -> dict[str, Any]:
    stages = [
        _step(f"n{layer}_{j}", [f"n{layer - 1}_{j}", f"n{layer - 1}_{(j + 1) % width}"] if layer else None)
        for layer in range(layers)
        for j in range(width)
    ]
    return {"name": "ha-lattice20", "stages": stages}


def fanout200() -> dict[str, Any]:
    return {
        "name": "ha-fanout200",
        "stages": [
            {"id": "source", "uses": "ha.items", "params": {"count": 200}},
            _step("each", ["source"], seconds=0.01, for_each="source"),
            _step("after", ["each"]),
        ],
    }


def fail_once() -> dict[str, Any]:
    countdown = {"max_attempts": 3, "backoff": "fixed", "delay": "0.3s"}
    delay_set = {"max_attempts": 3, "backoff": "fixed", "delay": f"{DELAY_SET_THRESHOLD_S + 1:g}s"}
    return {
        "name": "ha-fail-once",
        "stages": [
            _step("first"),
            {"id": "countdown", "uses": "ha.fail_once", "needs": ["first"], "retry": countdown},
            {"id": "delay_set", "uses": "ha.fail_once", "needs": ["first"], "retry": delay_set},
            _step("last", ["countdown", "delay_set"]),
        ],
    }


def pool1() -> dict[str, Any]:
    return {
        "name": "ha-pool1",
        "pools": {"solo": 1},
        "stages": [
            _step("start"),
            *[_step(f"p{i}", ["start"], seconds=0.2, pool="solo") for i in range(4)],
            _step("end", [f"p{i}" for i in range(4)]),
        ],
    }


def workload() -> list[PipelineSpec]:
    return [validate_data(p()) for p in (chain30, lattice20, fanout200, fail_once, pool1)]
