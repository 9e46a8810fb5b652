"""The registry of pipelines: `chordflow pipelines add/remove` (and `schedule add`, which registers
the pipeline it schedules), the links between registered pipelines, and the order of a chain.

A pipeline links to another by `depends_on` (it needs the other's success), `triggers`
(the other's success submits it) and `requires` (it needs an asset the other `provides`). Those
links must not form a cycle: a cycle of triggers would run forever, and one of dependencies
could never start. A pipeline is refused when adding it would close one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestration.engine.dependencies import registry
from orchestration.errors import InvalidPipeline, Problem
from orchestration.language import dag
from orchestration.language.builder import dump
from orchestration.language.spec import PipelineSpec

if TYPE_CHECKING:
    from orchestration.engine.store import RunStore


def upstreams(specs: Mapping[str, PipelineSpec]) -> dict[str, list[str]]:
    """Pipeline -> the pipelines it follows (depends_on, the triggers it waits for, the providers of
    what it requires), in the order of `specs`; names nothing registers are keys too (no upstreams)."""
    makers: dict[str, list[str]] = {}
    for name, spec in specs.items():
        for asset in spec.provides:
            makers.setdefault(asset, []).append(name)
    deps: dict[str, list[str]] = {}
    for name, spec in specs.items():
        ups = [d.pipeline for d in spec.depends_on] + [t.on_success_of for t in spec.triggers]
        ups += [m for r in spec.requires for m in makers.get(r.asset, []) if m != name]
        deps[name] = list(dict.fromkeys(ups))
    for ups in list(deps.values()):
        for up in ups:
            deps.setdefault(up, [])
    return deps


def cycles(specs: Mapping[str, PipelineSpec]) -> list[str]:
    """Each cycle among the links of `specs`, as `a → b → a`."""
    return [dag.format_cycle(cycle) for cycle in dag.find_cycles(upstreams(specs))]


def register(
    store: RunStore,
    spec: PipelineSpec,
    source: str | None = None,
    sets: Mapping[str, Any] | None = None,
    origin: str = "pipelines add",
) -> tuple[bool, list[str]]:
    """Register (or replace) `spec` under its name. Returns (whether it is new, notes: the pipelines
    it names that are not registered yet). InvalidPipeline when it would close a cycle."""
    notes: list[str] = []

    def check(entries: dict[str, dict[str, Any]]) -> None:
        # Run under the registry's WATCH (records.register_pipeline): the registry it checks is
        # the one the write lands on, so two concurrent registrations cannot close a cycle.
        current = {**_specs(entries), spec.name: spec}
        loops = cycles(current)
        if loops:
            raise InvalidPipeline(
                [
                    Problem(
                        f"registering it would make a cycle of pipelines: {loop} (depends_on, triggers, requires)"
                    )
                    for loop in loops
                ],
                source,
            )
        named = [d.pipeline for d in spec.depends_on] + [t.on_success_of for t in spec.triggers]
        notes[:] = [
            f"'{name}' is not registered (yet)" for name in dict.fromkeys(named) if name not in current
        ]

    entry = {
        "spec": dump(spec),
        "source": str(Path(source).resolve()) if source and Path(source).exists() else source,
        "sets": dict(sets or {}),
        "added_at": round(time.time(), 3),
        "origin": origin,
    }
    created = store.records.register_pipeline(
        spec.name, entry, [t.on_success_of for t in spec.triggers], check
    )
    return created, notes


def _specs(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, PipelineSpec]:
    """The specs of raw registry entries; one that no longer validates is left out, as
    `dependencies.registry` does (it cannot link to anything then)."""
    found = {}
    for name, entry in sorted(entries.items()):
        try:
            found[name] = PipelineSpec.model_validate(entry.get("spec") or {})
        except ValidationError:
            continue
    return found


def unregister(store: RunStore, name: str) -> bool:
    """Forget a registered pipeline (its runs, and schedules of it, stay); False if it was not there."""
    return store.records.unregister_pipeline(name)


def registered_specs(store: RunStore, names: Iterable[str]) -> dict[str, PipelineSpec]:
    """The registered specs of `names`, in that order; InvalidPipeline naming those not registered."""
    known = registry(store)
    names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidPipeline(
            [Problem(f"'{n}' is not a registered pipeline (see `chordflow pipelines`)") for n in missing]
        )
    return {n: known[n].spec for n in names}


def chain_order(specs: Mapping[str, PipelineSpec]) -> list[str]:
    """The pipelines of `specs` in dependency order (each after what it follows among them); ties
    keep the order given."""
    within = {n: [u for u in ups if u in specs] for n, ups in upstreams(specs).items() if n in specs}
    try:
        return dag.topological_order({n: within[n] for n in specs})
    except ValueError as exc:
        raise InvalidPipeline(Problem(f"the chain's pipelines form a cycle: {exc}")) from None


def downstream_by_triggers(store: RunStore, start: str) -> list[str]:
    """`start` and every registered pipeline its successes trigger, directly or not, in dependency order."""
    known = registry(store)
    if start not in known:
        registered_specs(store, [start])  # raises, naming it
    found = [start]
    for name in found:  # grows while it is read: a breadth-first walk
        found += [
            n
            for n, r in known.items()
            if n not in found and name in {t.on_success_of for t in r.spec.triggers}
        ]
    return chain_order({n: known[n].spec for n in found})
