"""The run store's runs: creating a run, reading it (its record, graph, stages, outputs, context,
metrics, events) and the run indexes, a running stage's progress, a finished run's expiry, and
Redis's clock.

A run is created in one MULTI (`create_run`): its record, graph, states, the outbox entries of its
ready roots, the run indexes and its `run_start` hook entry commit together. Every later change of
a stage's state is a script of `transitions.py`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
from cachetools import LRUCache

from orchestration.engine import durability, hooks
from orchestration.engine.capacity import CapacityUpkeep
from orchestration.engine.hook_stream import HOOKS_MAXLEN
from orchestration.engine.keys import Keys, encode_member
from orchestration.errors import RunNotFound
from orchestration.graph.resolve import RunGraph
from orchestration.settings import Settings
from orchestration.states import RunStatus, State

log = logging.getLogger("chordflow.runs")


class GraphCache(LRUCache):
    """Resolved graphs kept in memory, the least recently used dropped first: a graph is written
    once and never changes, and each of its nodes takes about 2 KB of a process's memory
    (RunGraph.stored; `benchmarks/bench_graph_cache.py`: a pool process holding 20,000 nodes,
    37 MiB over its start). Weighed in nodes (`graph_cache_nodes`), so a
    process that serves many large runs stays bounded (it kept 256 graphs of any size: 256 runs of
    10,000 stages would have been 10 GB); a graph over the budget counts as the whole budget, so
    the newest one is always kept. It remembers the runs it dropped (the last 1,000), so that
    reading one of them again, which costs a GET and a parse of the whole graph (about 4 µs a
    node), is said in the log, once a run: several large runs at once want a larger budget."""

    def __init__(self, nodes: int):
        super().__init__(nodes, getsizeof=lambda graph: min(max(len(graph.nodes), 1), nodes))
        self.dropped: OrderedDict[str, None] = OrderedDict()
        self.said: OrderedDict[str, None] = OrderedDict()

    def popitem(self) -> tuple[str, RunGraph]:
        run_id, graph = super().popitem()
        remember(self.dropped, run_id)
        return run_id, graph

    def read_again(self, run_id: str) -> bool:
        """Whether `run_id`'s graph, being read, was dropped before and nothing said of it yet."""
        if self.dropped.pop(run_id, False) is False or run_id in self.said:
            return False
        remember(self.said, run_id)
        return True


def remember(ids: OrderedDict[str, None], run_id: str, keep: int = 1000) -> None:
    ids[run_id] = None
    if len(ids) > keep:
        ids.popitem(last=False)


def new_run_id() -> str:
    """Sortable by time, unique enough across machines: 'r' + ms timestamp (base 36) + random."""
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def server_time(client: Any) -> float:
    """Redis's clock (epoch s), which every machine agrees on."""
    seconds, micros = client.time()
    return seconds + micros / 1e6


class Runs:
    """Runs: creation, reads, progress, expiry (see the module docstring)."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys, capacity: CapacityUpkeep):
        # redis-py types every reply as bytes | str | ...; our clients decode to str, so the
        # replies are used as what they are (str, list[str], dict[str, str]).
        self._r: Any = client
        self.settings = settings
        self.keys = keys
        self._capacity = capacity  # an ended run's waiters are dropped at its expiry
        # cachetools' caches are not thread-safe; a worker's threads (its pool's, the hook sender's,
        # the reaper's) share this store
        self._graphs = GraphCache(settings.graph_cache_nodes)
        self._graphs_lock = threading.Lock()
        # CHORDFLOW_REPLICAS_ACK's Replicas (None: off), shared with Transitions: one count of the
        # attached replicas for every acknowledged write of this store
        self.replicas = durability.replicas(settings, keys.replicated_mark())

    # -- creating a run ----------------------------------------------------------------------
    def create_run(
        self,
        graph: RunGraph,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Store the run and its graph at once; returns (run id, created). Ready roots are 'queued'."""
        run_id = run_id or new_run_id()
        k = self.keys
        if idempotency_key and not self._r.set(
            k.idempotency(idempotency_key), run_id, nx=True, ex=int(self.settings.run_ttl_s)
        ):
            existing = self._r.get(k.idempotency(idempotency_key))
            if existing:
                return existing, False
        now = time.time()
        roots = [n.id for n in graph.nodes if not n.needs]
        record = {
            "run_id": run_id,
            "pipeline": graph.name,
            "version": graph.version,
            "status": RunStatus.RUNNING,
            "created_at": f"{now:.3f}",
            "started_at": f"{now:.3f}",
            "remaining": len(graph.nodes),
            "total": len(graph.nodes),
            "fail_fast": int(graph.fail_fast),
            "fence": 0,
            "variables": json.dumps(graph.variables),
            **{key: str(value) for key, value in (extra or {}).items()},
        }
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(k.run(run_id), mapping=record)
        pipe.set(k.graph(run_id), graph.model_dump_json(exclude_defaults=True))
        pipe.hset(
            k.states(run_id),
            mapping={n.id: State.QUEUED if not n.needs else State.PENDING for n in graph.nodes},
        )
        # the needs each stage waits for, counted down by its parents' commits (Node.counted)
        pending = {n.id: len(n.needs) for n in graph.nodes if n.counted}
        if pending:
            pipe.hset(k.pending(run_id), mapping=pending)
        pipe.xadd(
            k.events(run_id),
            {"t": f"{now:.3f}", "kind": "run", "state": RunStatus.RUNNING},
            maxlen=200000,
            approximate=True,
        )
        if roots:
            pipe.zadd(k.outbox(), {encode_member(run_id, sid): now for sid in roots})
        pipe.zadd(k.runs(), {run_id: now})
        pipe.zadd(k.active_runs(), {run_id: now})
        start = {
            "run_id": run_id,
            "pipeline": graph.name,
            "status": RunStatus.RUNNING,
            "stages": len(graph.nodes),
        }
        pipe.xadd(
            k.hooks(), {"e": hooks.announced("run_start", start)}, maxlen=HOOKS_MAXLEN, approximate=True
        )
        pipe.zadd(k.pipeline_runs(graph.name), {run_id: now})
        pipe.execute()
        with self._graphs_lock:
            self._graphs[run_id] = graph
        durability.confirm(self._r, self.replicas, f"run {run_id}")
        durability.record(self.settings, {"run": run_id, "created": True})
        return run_id, True

    # -- one run ---------------------------------------------------------------------------
    def graph(self, run_id: str) -> RunGraph:
        """The run's resolved graph (cached: it never changes); RunNotFound if there is none."""
        with self._graphs_lock:
            graph = self._graphs.get(run_id)
        if graph is None:
            raw = self._r.get(self.keys.graph(run_id))
            if raw is None:
                raise RunNotFound(run_id)
            graph = RunGraph.stored(raw)
            with self._graphs_lock:
                again = self._graphs.read_again(run_id)
                self._graphs[run_id] = graph
            if again:
                log.warning(
                    "run %s: its graph (%d stages) was read and parsed again, dropped from this "
                    "process's cache of %d stages for other runs' (CHORDFLOW_GRAPH_CACHE_NODES)",
                    run_id,
                    len(graph.nodes),
                    self.settings.graph_cache_nodes,
                )
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
        self,
        run_id: str,
        after: str = "0-0",
        block_ms: int | None = None,
        count: int = 1000,
        run_only: bool = False,
    ) -> list[tuple[str, dict[str, str]]]:
        """Events after stream id `after`; blocks up to `block_ms` for new ones. `run_only`: the
        run's own changes only (Keys.run_ends; its ids are its own), not one per stage."""
        stream = self.keys.run_ends(run_id) if run_only else self.keys.events(run_id)
        res = self._r.xread({stream: after}, count=count, block=block_ms)
        return [(eid, fields) for _, entries in res for eid, fields in entries] if res else []

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
        return server_time(self._r)

    # -- one run: what is written outside the scripts ------------------------------------------
    def report_progress(self, run_id: str, stage_id: str, attempt: int, done: float, total: float) -> None:
        """What a running stage reported with `ctx.progress` (the attempt's own: `status` shows it
        only while that attempt is the stage's)."""
        fields = {"progress_done": repr(done), "progress_total": repr(total), "progress_attempt": attempt}
        self._r.hset(self.keys.stage(run_id, stage_id), mapping=fields)

    def expire_run(self, run_id: str, graph: RunGraph) -> None:
        """Set the TTL on every key of a finished run, and take what of it still waits out of the
        waiting and delay sets (a cancelled run, or one failed while some stage waited for room).

        The run leaves the active runs last, in the same round trip: one still there after its end
        (its worker died before this) is expired by the reaper's sweep (engine/antientropy.py)."""
        ttl = int(self.settings.run_ttl_s)
        fan_outs = {n.id for n in graph.nodes if n.fans_out}
        pipe = self._r.pipeline(transaction=False)
        for key in self.keys.run_keys(run_id, [n.id for n in graph.nodes], fan_outs):
            pipe.expire(key, ttl)
        pipe.zrem(self.keys.active_runs(), run_id)
        pipe.execute()
        self._capacity.drop_waiters(run_id, graph)


def _number(value: str) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number
