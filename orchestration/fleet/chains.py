"""Chains of pipelines: `chordflow chain run A B C D` (or `--from A`, following the triggers) runs
registered pipelines one after another in dependency order, each as its own run, and stops at the
first that does not succeed; `chordflow chain resume` goes on from there, reusing the runs that
succeeded and submitting the failed pipeline again from its registered file (so a fix made with
`chordflow pipelines add` is what runs).

The chain is driven by the command that runs it, and kept in Redis after every step (`Keys.chain`):
its pipelines in order, the newest run of each, how many runs each was given, its status. Each
step is submitted under the idempotency key `chain:<chain>:<pipeline>:<attempt>`, so a chain whose
driver died right after a submit, once resumed, finds that run and waits for it instead of
submitting another. Each run records its chain (`chain` in the run record), and the hook sender
does not fire the triggers between a chain's own pipelines for it: the chain runs them itself.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestration.api import Client
from orchestration.engine.dependencies import key_name
from orchestration.errors import ChordflowError, DependenciesNotMet, InvalidId
from orchestration.fleet.registry import chain_order, downstream_by_triggers, registered_specs
from orchestration.states import RunStatus

CHAIN_ID = re.compile(r"c[0-9a-f]{8,40}")
ACTIVE = (RunStatus.RUNNING, RunStatus.PAUSED)

OnStep = Callable[[str, str, str], None]  # (pipeline, run id, what happened)


@dataclass
class Chain:
    chain_id: str
    pipelines: list[str]
    runs: dict[str, str] = field(default_factory=dict)  # pipeline -> its newest run in the chain
    attempts: dict[str, int] = field(default_factory=dict)  # pipeline -> runs submitted for it
    status: str = RunStatus.RUNNING  # running | succeeded | failed | blocked (dependencies not met)
    failed: str | None = None  # the pipeline it stopped at
    reason: str | None = None
    force: bool = False
    started_at: float = 0.0
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, client: Client) -> None:
        self.updated_at = round(time.time(), 3)
        client.store.records.save_chain(self.chain_id, self.as_dict(), self.started_at)


def new_chain_id() -> str:
    """Sortable by time, like a run id: 'c' + ms timestamp (hex) + random."""
    return f"c{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def check_chain_id(value: str) -> str:
    if not CHAIN_ID.fullmatch(value):
        raise InvalidId(f"chain id {value!r} is not valid (a chain id is 'c' and 8-40 hex digits)")
    return value


def start(client: Client, names: list[str], force: bool = False, from_pipeline: str | None = None) -> Chain:
    """A new chain of the registered `names` (or of `from_pipeline` and what its successes trigger),
    in dependency order; stored, not run yet."""
    if from_pipeline is not None:
        order = downstream_by_triggers(client.store, from_pipeline)
    else:
        order = chain_order(registered_specs(client.store, names))
    now = round(time.time(), 3)
    chain = Chain(new_chain_id(), order, force=force, started_at=now)
    chain.save(client)
    return chain


def load(client: Client, chain_id: str | None = None) -> Chain:
    """Chain `chain_id`, or the newest chain."""
    if chain_id is None:
        newest = client.store.records.recent_chains(1)
        if not newest:
            raise ChordflowError("no chain to resume: start one with `chordflow chain run PIPELINE...`")
        chain_id = newest[0]
    data = client.store.records.chain(check_chain_id(chain_id))
    if data is None:
        raise ChordflowError(f"no chain '{chain_id}' in the store (wrong id, or it expired)")
    return Chain(**{k: v for k, v in data.items() if k in Chain.__dataclass_fields__})


def drive(
    client: Client, chain: Chain, timeout_s: float | None = None, on_step: OnStep | None = None
) -> Chain:
    """Run the chain's pipelines in order from the first without a successful run, each waited for;
    stop at the first that does not succeed. DependenciesNotMet (the chain is then `blocked`) when
    a pipeline's dependencies are not met and the chain is not forced."""
    step = on_step or (lambda pipeline, run_id, what: None)
    chain.status, chain.failed, chain.reason = RunStatus.RUNNING, None, None
    chain.save(client)
    for name in chain.pipelines:
        run_id = chain.runs.get(name)
        status = client.store.runs.run_status(run_id) if run_id else None
        if status == RunStatus.SUCCEEDED:
            step(name, str(run_id), "reused")
            continue
        if status not in ACTIVE:
            run_id = _submit(client, chain, name, again=run_id is not None)
            step(name, run_id, "submitted")
        assert run_id is not None
        final = client.follow(run_id, timeout_s)
        step(name, run_id, final)
        if final != RunStatus.SUCCEEDED:
            chain.status, chain.failed = RunStatus.FAILED, name
            chain.reason = f"run {run_id} of {name} {final}"
            chain.save(client)
            return chain
    chain.status = RunStatus.SUCCEEDED
    chain.save(client)
    return chain


def _submit(client: Client, chain: Chain, name: str, again: bool) -> str:
    """Submit pipeline `name` for the chain: the same attempt when no run of it was recorded (a
    driver that died right after submitting), else the next one."""
    attempt = chain.attempts.get(name, 0) + (1 if again or name not in chain.attempts else 0)
    chain.attempts[name] = attempt
    chain.save(client)
    spec = registered_specs(client.store, [name])[name]
    try:
        handle = client.submit(
            spec,
            force=chain.force,
            chain=chain.chain_id,
            idempotency_key=f"chain:{chain.chain_id}:{key_name(name)}:{attempt}",
        )
    except DependenciesNotMet as exc:
        chain.status, chain.failed, chain.reason = "blocked", name, "; ".join(exc.unmet)
        chain.save(client)
        raise
    chain.runs[name] = handle.run_id
    chain.save(client)
    return handle.run_id


def chain_runs(client: Client, chain_id: str) -> list[dict[str, Any]]:
    """The chain's pipelines in order, each with its newest run and that run's status (for the run page)."""
    data = client.store.records.chain(chain_id)
    if data is None:
        return []
    runs = data.get("runs") or {}
    names = list(data.get("pipelines") or [])
    ids = [runs.get(n) for n in names]
    statuses = client.store.runs.run_fields([i for i in ids if i], ["status"])
    by_id = dict(zip([i for i in ids if i], (s for (s,) in statuses)))
    return [{"pipeline": n, "run_id": i, "status": by_id.get(i) if i else None} for n, i in zip(names, ids)]


def describe(chain: Chain) -> str:
    """One line: the chain, its status, and its pipelines with their runs."""
    steps = " → ".join(f"{n}{'(' + chain.runs[n] + ')' if n in chain.runs else ''}" for n in chain.pipelines)
    tail = f" at {chain.failed}" if chain.failed else ""
    return f"chain {chain.chain_id} {chain.status}{tail}: {steps}"


__all__ = ["Chain", "chain_runs", "check_chain_id", "describe", "drive", "load", "start"]
