"""The run store's queries: what a run, its stages and the run indexes hold. No writes.

`RunReads` holds the Redis client, the settings and the key builder that the
whole store shares; `transitions.Transitions` and `store.RunStore` build on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from orchestration.engine.keys import Keys
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings

GRAPH_CACHE = 256  # resolved graphs kept in memory (a graph is written once and never changes)


class RunReads:
    """The run store's queries, and what the whole store shares: the client, settings, keys."""

    def __init__(self, client: redis.Redis, settings: Settings):
        # redis-py types every reply as bytes | str | ...; our clients decode to str, so the
        # replies are used as what they are (str, list[str], dict[str, str]).
        self._r: Any = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._graphs: dict[str, RunGraph] = {}

    # -- one run ---------------------------------------------------------------------------
    def graph(self, run_id: str) -> RunGraph:
        """The run's resolved graph (cached: it never changes); RunNotFound if there is none."""
        graph = self._graphs.get(run_id)
        if graph is None:
            raw = self._r.get(self.keys.graph(run_id))
            if raw is None:
                raise RunNotFound(run_id)
            graph = RunGraph.model_validate_json(raw)
            if len(self._graphs) > GRAPH_CACHE:
                self._graphs.clear()
            self._graphs[run_id] = graph
        return graph

    def run(self, run_id: str) -> dict[str, str]:
        """The run record (pipeline, status, times, counters); RunNotFound if there is none."""
        record = self._r.hgetall(self.keys.run(run_id))
        if not record:
            raise RunNotFound(run_id)
        return record

    def run_status(self, run_id: str) -> str | None:
        """The run's status, or None when there is no such run."""
        return self._r.hget(self.keys.run(run_id), "status")

    def run_fields(self, run_ids: Sequence[str], fields: Sequence[str]) -> list[list[str | None]]:
        """`fields` of each run record, in order (None where missing); one round trip."""
        if not run_ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), list(fields))
        return pipe.execute()

    def states(self, run_id: str) -> dict[str, str]:
        """Stage id -> state."""
        return self._r.hgetall(self.keys.states(run_id))

    def stage_state(self, run_id: str, stage_id: str) -> str | None:
        """One stage's state, or None."""
        return self._r.hget(self.keys.states(run_id), stage_id)

    def stage_details(self, run_id: str, stage_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Stage id -> its attempt record (token, attempt, host, times, error); one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for sid in stage_ids:
            pipe.hgetall(self.keys.stage(run_id, sid))
        return dict(zip(stage_ids, pipe.execute()))

    def items(self, run_id: str, stage_id: str) -> dict[int, dict[str, str]]:
        """A fan-out stage's items: index -> its record (state, attempt, output, ...)."""
        out: dict[int, dict[str, str]] = {}
        for fieldname, value in self._r.hgetall(self.keys.items(run_id, stage_id)).items():
            index, _, name = fieldname.partition(":")
            out.setdefault(int(index), {})[name] = value
        return out

    def items_total(self, run_id: str, stage_id: str) -> int:
        """How many items a started fan-out stage has (0 before it started)."""
        return int(self._r.hget(self.keys.stage(run_id, stage_id), "items_total") or 0)

    def item_states(self, run_id: str, stage_id: str, indexes: Sequence[int]) -> list[str | None]:
        """The state of each of these items of a fan-out stage (None: never started)."""
        if not indexes:
            return []
        return self._r.hmget(self.keys.items(run_id, stage_id), *(f"{i}:state" for i in indexes))

    def outputs(self, run_id: str, stage_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """Stage id -> output, for every stage with one or for `stage_ids` (None where missing)."""
        key = self.keys.outputs(run_id)
        if stage_ids is None:
            return {sid: json.loads(v) for sid, v in self._r.hgetall(key).items()}
        ids = list(stage_ids)
        if not ids:
            return {}
        return {sid: json.loads(v) if v is not None else None for sid, v in zip(ids, self._r.hmget(key, ids))}

    def output(self, run_id: str, stage_id: str) -> Any:
        """One stage's output, or None."""
        raw = self._r.hget(self.keys.outputs(run_id), stage_id)
        return json.loads(raw) if raw is not None else None

    def context(self, run_id: str) -> dict[str, Any]:
        """The run's shared context: key -> value."""
        return {k: json.loads(v) for k, v in self._r.hgetall(self.keys.context(run_id)).items()}

    def context_get(self, run_id: str, key: str) -> Any:
        """One shared context value, or None."""
        raw = self._r.hget(self.keys.context(run_id), key)
        return json.loads(raw) if raw is not None else None

    def metrics(self, run_id: str) -> dict[str, float]:
        """The run's metrics: name -> number."""
        return {k: _number(v) for k, v in self._r.hgetall(self.keys.metrics(run_id)).items()}

    def events(
        self, run_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after stream id `after`; blocks up to `block_ms` for new ones."""
        res = self._r.xread({self.keys.events(run_id): after}, count=count, block=block_ms)
        return [(eid, fields) for _, entries in res for eid, fields in entries] if res else []

    def logs(self, run_id: str, stage_id: str) -> list[str]:
        """A stage's captured output lines."""
        return self._r.lrange(self.keys.logs(run_id, stage_id), 0, -1)

    def cached_output(self, key: str) -> str | None:
        """A cached stage output (JSON text) under a cache key, or None."""
        return self._r.get(self.keys.cache(key))

    # -- across runs -----------------------------------------------------------------------
    def recent_runs(self, limit: int = 20, pipeline: str | None = None) -> list[str]:
        """The newest `limit` run ids, of every pipeline or of `pipeline`, newest first."""
        key = self.keys.pipeline_runs(pipeline) if pipeline else self.keys.runs()
        return self._r.zrevrange(key, 0, limit - 1)

    def first_run_at(self, pipeline: str) -> float | None:
        """When the oldest kept run of `pipeline` was submitted (epoch s), or None."""
        first = self._r.zrange(self.keys.pipeline_runs(pipeline), 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def pipelines(self) -> list[str]:
        """The names of the pipelines with runs, sorted (a SCAN: for health checks, not hot paths)."""
        pattern = self.keys.pipeline_runs_pattern()
        return sorted(self.keys.pipeline_of(key) for key in self._r.scan_iter(match=pattern, count=1000))

    def server_time(self) -> float:
        """Redis's clock (epoch s), which every machine agrees on."""
        seconds, micros = self._r.time()
        return seconds + micros / 1e6


def _number(value: str) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number
