"""Resolve a validated PipelineSpec into the flat graph a run executes.

The flat graph has one node per enabled, selected stage, with everything a
worker needs resolved: its type, params, queue, the file's retry policy
(defaults merged under the stage's own), timeout, condition, fan-out or
matrix instances, fallback, cache, and its needs after order-based chaining
and selection. It is stored once per run; messages carry only ids.
"""

from __future__ import annotations

import itertools
import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import Field

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language import rates
from orchestration.language.fields import Model
from orchestration.language.options import Cache, Fallback, Resources, RetryPolicy, Webhook
from orchestration.language.rates import PoolLimit, RateLimit
from orchestration.settings import Settings

if TYPE_CHECKING:
    from orchestration.language.spec import PipelineSpec, Stage

# A worker imports this module for Node and RunGraph, the stored graph it reads; the file language
# (spec, loader, selection, ...) is imported by resolve() itself, so a worker never loads it.

DEFAULT_ESTIMATE_S = 1.0
CRITICAL_PRIORITY = 9
NORMAL_PRIORITY = 5


class Node(Model):
    """One stage of a run, fully resolved."""

    id: str
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    run: tuple[str, ...] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    needs: tuple[str, ...] = ()
    queue: str
    resources: Resources | None = None
    retry: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = None
    when: str | None = None
    critical: bool = True
    for_each: str | None = None
    max_concurrency: int | None = None
    matrix: tuple[dict[str, Any], ...] | None = None
    fallback: Fallback | None = None
    cache: Cache | None = None
    estimate_s: float = DEFAULT_ESTIMATE_S
    order: int | None = None
    level: int = 0
    tags: tuple[str, ...] = ()
    on_critical_path: bool = False
    priority: int = NORMAL_PRIORITY
    pool: str | None = None
    concurrency_key: str | None = None  # the stage's key with its ${params.NAME} filled in

    @property
    def retry_policy(self) -> RetryPolicy:
        """The file's policy for this stage (only the fields the file set count as set)."""
        return RetryPolicy.model_validate(self.retry)

    @property
    def reads(self) -> list[str]:
        """The stages whose outputs an attempt reads: its needs, and its for_each source."""
        if self.for_each and self.for_each not in self.needs:
            return [*self.needs, self.for_each]
        return list(self.needs)

    @property
    def fans_out(self) -> bool:
        return self.for_each is not None or self.matrix is not None

    @property
    def counted(self) -> bool:
        """Whether its needs are counted down in the run's pending hash: two needs or more. A stage
        with one is made ready by that parent's commit, which happens once (finish.lua's `lone`)."""
        return len(self.needs) > 1


_NODE_FIELDS = tuple(Node.model_fields)


def _trusted_node(**values: Any) -> Node:
    """`Node.model_construct(**values)` for values that set every field, in order, as resolve's
    do: the same instance (its `__dict__`, fields set, no extra, no private) without
    model_construct's loop over every field's aliases and defaults, a third of resolving a
    10,000-stage pipeline. Anything else goes to model_construct itself."""
    if tuple(values) != _NODE_FIELDS or Node.__pydantic_post_init__:
        return Node.model_construct(**values)
    node = Node.__new__(Node)
    object.__setattr__(node, "__dict__", values)
    object.__setattr__(node, "__pydantic_fields_set__", set(values))
    object.__setattr__(node, "__pydantic_extra__", None)
    object.__setattr__(node, "__pydantic_private__", None)
    return node


class RunGraph(Model):
    """What a run executes: the resolved nodes in topological order."""

    name: str
    version: str
    variables: dict[str, Any] = Field(default_factory=dict)
    fail_fast: bool = True
    webhooks: tuple[Webhook, ...] = ()
    nodes: tuple[Node, ...]
    critical_path: tuple[str, ...] = ()
    makespan_s: float = 0.0
    no_cache: bool = False
    # The pools nodes name and the rate limits of their types (the tighter of the file's and settings').
    pools: dict[str, PoolLimit] = Field(default_factory=dict)
    type_rates: dict[str, RateLimit] = Field(default_factory=dict)
    max_parallel: int | None = None

    @cached_property
    def index(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    @cached_property
    def children(self) -> dict[str, list[str]]:
        """Stage id -> the ids that need it, in file order (kept with the graph, dropped with it)."""
        from orchestration.language.dag import children

        return children(self.deps())

    def node(self, stage_id: str) -> Node:
        return self.index[stage_id]

    def deps(self) -> dict[str, tuple[str, ...]]:
        return {n.id: n.needs for n in self.nodes}

    @classmethod
    def stored(cls, raw: str | bytes) -> RunGraph:
        """A run's graph as Redis holds it, parsed to be kept in a worker's memory (the graph cache):
        the nodes that set the same fields share one `__pydantic_fields_set__`. That set is 728
        of the 2,000 bytes a node takes (tracemalloc over a 2,000-stage chain); a graph's nodes set
        a handful of combinations of fields. Sharing is safe for a frozen model: nothing assigns to
        a node, and `model_copy` copies the set before it adds to it."""
        graph = cls.model_validate_json(raw)
        shared: dict[frozenset[str], set[str]] = {}
        for node in graph.nodes:
            fields = node.__pydantic_fields_set__
            object.__setattr__(node, "__pydantic_fields_set__", shared.setdefault(frozenset(fields), fields))
        return graph


def _policy(value: str | RetryPolicy | None, spec: PipelineSpec) -> RetryPolicy | None:
    if isinstance(value, str):
        return spec.retry_policies[value]
    return value


def file_policy(
    stage: Stage, spec: PipelineSpec, _dumps: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """defaults.retry, then the stage's retry over it; only explicitly set fields are kept."""
    merged: dict[str, Any] = {}
    for layer in (_policy(spec.defaults.retry, spec), _policy(stage.retry, spec)):
        if layer is not None:
            dumped = _dumps.get(id(layer)) if _dumps is not None else None
            if dumped is None:
                dumped = layer.model_dump(mode="json", include=layer.model_fields_set)
                if _dumps is not None:
                    _dumps[id(layer)] = dumped
            merged.update(dumped)
    return merged


def matrix_instances(
    matrix: dict[str, tuple[Any, ...]], limit: int | None = None
) -> tuple[dict[str, Any], ...]:
    """Every combination of the axes' values; InvalidPipeline, before expanding, if over `limit`."""
    if limit is not None and math.prod(len(v) for v in matrix.values()) > limit:
        raise InvalidPipeline(
            f"a matrix of {' x '.join(str(len(v)) for v in matrix.values())} makes over "
            f"{limit:,} instances, the limit (max_matrix_instances)"
        )
    axes = list(matrix)
    return tuple(dict(zip(axes, combo)) for combo in itertools.product(*(matrix[a] for a in axes)))


def resolve(
    spec: PipelineSpec,
    settings: Settings | None = None,
    selection: str | None = None,
    only: bool = False,
    estimates: dict[str, float] | None = None,
) -> RunGraph:
    """The flat run graph of a validated spec, with `selection` applied."""
    from orchestration.language.loader import gc_paused

    # Thousands of fresh nodes and none of them garbage: the cycle collector would walk the
    # whole heap again and again (a third of the time in a process with a large heap).
    with gc_paused():
        return _resolve(spec, settings or Settings(), selection, only, estimates)


def _resolve(
    spec: PipelineSpec,
    settings: Settings,
    selection: str | None,
    only: bool,
    estimates: dict[str, float] | None,
) -> RunGraph:
    from orchestration.language import dag as graph
    from orchestration.language.needs import effective_needs
    from orchestration.language.routing import queue_for
    from orchestration.language.selection import Selectable, select

    enabled = [s for s in spec.stages if s.enabled]
    # A spec built without validate_data (PipelineSpec.model_validate) was never held to the limits.
    expanded = sum(math.prod(len(v) for v in s.matrix.values()) if s.matrix else 1 for s in enabled)
    if expanded > settings.max_stages:
        raise InvalidPipeline(
            [
                Problem(
                    f"the pipeline has {expanded:,} stages once matrices are expanded; "
                    f"the limit is {settings.max_stages:,} (max_stages)"
                )
            ]
        )
    deps = effective_needs(spec.stages)
    if selection:
        chosen = set(
            select([Selectable(s.id, tuple(deps[s.id]), s.tags, s.order) for s in enabled], selection, only)
        )
        enabled = [s for s in enabled if s.id in chosen]
        deps = {sid: [n for n in needs if n in chosen] for sid, needs in deps.items() if sid in chosen}
    history = estimates or {}
    # A recorded duration counts even when it is 0 (a stage faster than the clock's millisecond).
    est = {
        s.id: history[s.id]
        if history.get(s.id) is not None
        else s.estimate or spec.defaults.estimate or DEFAULT_ESTIMATE_S
        for s in enabled
    }
    order, levels, path, makespan = graph.layout(deps, est)
    on_path = set(path)
    by_id = {s.id: s for s in enabled}
    dumps: dict[int, dict[str, Any]] = {}  # a shared policy is dumped once, not once per stage
    limits = _Limits(spec, settings)
    nodes = []
    for sid in order:
        s = by_id[sid]
        resources = s.resources or spec.defaults.resources
        if s.pool is not None or s.concurrency_key is not None or limits.rates is not None:
            limits.add(s)
        # Every value here comes from validated models: construct without validating again.
        nodes.append(
            _trusted_node(
                id=s.id,
                type=s.type_name,
                params=s.params,
                run=s.run,
                env=s.env,
                cwd=s.cwd,
                needs=tuple(deps[sid]),
                queue=queue_for(resources, s.queue, spec.defaults.queue, settings),
                resources=resources,
                retry=file_policy(s, spec, dumps),
                timeout_s=s.timeout if s.timeout is not None else spec.defaults.timeout,
                when=s.when,
                critical=s.critical,
                for_each=s.for_each,
                max_concurrency=s.max_concurrency,
                matrix=matrix_instances(s.matrix, settings.max_matrix_instances) if s.matrix else None,
                fallback=s.fallback,
                cache=s.cache,
                estimate_s=est[sid],
                order=s.order,
                level=levels[sid],
                tags=s.tags,
                on_critical_path=sid in on_path,
                priority=CRITICAL_PRIORITY if sid in on_path else NORMAL_PRIORITY,
                pool=s.pool,
                concurrency_key=limits.keys.get(sid),
            )
        )
    return RunGraph(
        name=spec.name,
        version=spec.version,
        variables=spec.variables,
        fail_fast=spec.fail_fast,
        webhooks=spec.webhooks,
        nodes=tuple(nodes),
        critical_path=tuple(path),
        makespan_s=makespan,
        pools=limits.pools,
        type_rates=limits.type_rates,
        max_parallel=spec.max_parallel,
    )


class _Limits:
    """The pools, type rates and concurrency keys of the nodes, gathered as resolve goes; a stage
    that names no pool or key costs nothing unless some type has a rate limit (then a dict lookup)."""

    def __init__(self, spec: PipelineSpec, settings: Settings):
        self.spec, self.settings = spec, settings
        self.pools: dict[str, PoolLimit] = {}
        self.type_rates: dict[str, RateLimit] = {}
        self.keys: dict[str, str] = {}
        self._settings: tuple[dict[str, PoolLimit], dict[str, RateLimit]] | None = None
        self.rates: dict[str, RateLimit] | None = None  # None: no type has a rate limit
        if spec.rate_limits or settings.rate_limits:
            file, fleet = spec.rate_limits, self._from_settings()[1]
            self.rates = {}
            for name in {*file, *fleet}:
                rate = rates.tighter_rate(file.get(name), fleet.get(name))
                if rate is not None:
                    self.rates[name] = rate

    def _from_settings(self) -> tuple[dict[str, PoolLimit], dict[str, RateLimit]]:
        if self._settings is None:
            try:
                self._settings = rates.settings_limits(self.settings)
            except ValueError as exc:
                raise InvalidPipeline([Problem(str(exc))]) from None
        return self._settings

    def add(self, stage: Stage) -> None:
        if self.rates is not None and stage.type_name in self.rates:
            self.type_rates[stage.type_name] = self.rates[stage.type_name]
        name = stage.pool
        if name is not None and name not in self.pools:
            pool = rates.tighter_pool(self.spec.pools.get(name), self._from_settings()[0].get(name))
            if pool is None:
                raise InvalidPipeline([Problem(rates.undeclared_pool(name), stage.id)])
            self.pools[name] = pool
        if stage.concurrency_key is not None:
            try:
                self.keys[stage.id] = rates.fill_key(stage.concurrency_key, stage.params)
            except ValueError as exc:
                raise InvalidPipeline([Problem(str(exc), stage.id)]) from None
