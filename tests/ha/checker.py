"""The six checks of a failover test (issue 19), a pure function of the recording and the final state.

1. runs: every run id a client was given exists and is final.
2. acks: every acknowledged commit is in the final state, with the same outcome and output hash.
3. once: no unit has two acknowledged commits (two that end it, or two of one attempt), and no token
   is used by two executions (or two different commits) of one unit.
4. inputs: every execution of a child read, for each parent, that parent's final output.
5. exclusive: two executions of one unit overlap in time only if one of them lost its lease: it was
   told so (`ctx.cancelled()`), its process died, or it committed nothing (its token is neither the
   unit's final token nor in an ack).
6. stuck: no unit is `queued` or `retrying` for longer than the sweep's grace.

Each check says what it looked at (its counts), so a run that did nothing cannot pass unnoticed,
and the first violations, readable.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .final_state import RUN_FINAL, FinalState, FinalUnit
from .history import TERMINAL_OUTCOMES, Ack, Execution, History, Unit

SHOWN = 20  # violations listed per check; the count has them all


@dataclass
class CheckResult:
    name: str
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    @property
    def held(self) -> bool:
        return self.violation_count == 0

    def violate(self, why: str) -> None:
        self.violation_count += 1
        if len(self.violations) < SHOWN:
            self.violations.append(why)

    def __str__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        head = f"{self.name}: {'held' if self.held else f'FAILED ({self.violation_count})'} [{counts}]"
        return "\n    ".join([head, *self.violations])


@dataclass
class Report:
    checks: list[CheckResult]

    def by_name(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    @property
    def held(self) -> bool:
        return all(c.held for c in self.checks)

    def failed(self) -> set[str]:
        return {c.name for c in self.checks if not c.held}

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self.checks)


def _unit(final: FinalState, unit: Unit) -> FinalUnit | None:
    run = final.runs.get(unit[0])
    return None if run is None else run.units.get((unit[1], unit[2]))


def _name(unit: Unit) -> str:
    run, stage, item = unit
    return f"{run}/{stage}" + ("" if item is None else f"[{item}]")


def check_runs(history: History, final: FinalState) -> CheckResult:
    result = CheckResult("1 runs final")
    result.counts = {"given": len(history.given_runs), "final": 0, "succeeded": 0}
    for run_id in sorted(history.given_runs):
        run = final.runs.get(run_id)
        if run is None or run.status is None:
            result.violate(f"run {run_id} was given to a client but does not exist")
        elif run.status not in RUN_FINAL:
            result.violate(f"run {run_id} is {run.status}, not final")
        else:
            result.counts["final"] += 1
            result.counts["succeeded"] += run.status == "succeeded"
    return result


def check_acks(history: History, final: FinalState) -> CheckResult:
    result = CheckResult("2 acks durable")
    result.counts = {"acks": len(history.acks), "terminal": 0, "retrying": 0}
    for ack in history.acks:
        unit = _unit(final, ack.unit)
        where = f"{_name(ack.unit)} attempt {ack.attempt} (token {ack.token})"
        if unit is None:
            result.violate(f"{where}: acknowledged {ack.outcome}, but the unit is gone")
            continue
        if ack.outcome not in TERMINAL_OUTCOMES:
            # a retry: the unit moved past this attempt (or still waits for the next one)
            result.counts["retrying"] += 1
            if not (unit.attempt > ack.attempt or (unit.state == "retrying" and unit.attempt == ack.attempt)):
                result.violate(
                    f"{where}: acknowledged retrying, but the unit is {unit.state} at attempt {unit.attempt}"
                )
            continue
        result.counts["terminal"] += 1
        if unit.state != ack.outcome:
            result.violate(f"{where}: acknowledged {ack.outcome}, final state is {unit.state}")
        elif ack.output_hash is not None and unit.output_hash != ack.output_hash:
            result.violate(
                f"{where}: acknowledged output {ack.output_hash[:12]}, final output is {(unit.output_hash or 'none')[:12]}"
            )
    return result


def check_once(history: History, final: FinalState) -> CheckResult:
    result = CheckResult("3 once per unit")
    per_unit: dict[Unit, list[Ack]] = defaultdict(list)
    for ack in history.acks:
        per_unit[ack.unit].append(ack)
    for unit, acks in per_unit.items():
        ends = [a for a in acks if a.outcome in TERMINAL_OUTCOMES]
        attempts = [a.attempt for a in acks]
        if len(ends) > 1 or len(set(attempts)) < len(attempts):
            listed = ", ".join(f"attempt {a.attempt} {a.outcome} token {a.token}" for a in acks)
            result.violate(f"{_name(unit)}: acknowledged twice: {listed}")
        tokens = [a.token for a in acks]
        for token in sorted({t for t in tokens if tokens.count(t) > 1}):
            result.violate(f"{_name(unit)}: token {token} names {tokens.count(token)} acknowledged commits")
    by_token: dict[tuple[Unit, str], set[str]] = defaultdict(set)
    unknown = 0
    for ex in history.executions:
        if ex.token is None:
            unknown += 1
        else:
            by_token[(ex.unit, ex.token)].add(ex.exec_id)
    for (unit, token), execs in by_token.items():
        if len(execs) > 1:
            result.violate(f"{_name(unit)}: token {token} given to {len(execs)} executions")
    result.counts = {
        "units_acked": len({a.unit for a in history.acks}),
        "tokens": len(by_token),
        "executions": len(history.executions),
        "token_unknown": unknown,
    }
    return result


def _committed(history: History, final: FinalState) -> set[tuple[Unit, str]]:
    """(unit, token) of every commit that counts: acknowledged, or the one the final state holds."""
    found = {(a.unit, a.token) for a in history.acks}
    for run_id, run in final.runs.items():
        for (stage, item), unit in run.units.items():
            if unit.token is not None and unit.state not in (None, "running", "queued", "pending"):
                found.add(((run_id, stage, item), unit.token))
    return found


def check_inputs(history: History, final: FinalState) -> CheckResult:
    """Only executions whose commit counts: one whose commit was refused (it began on a primary that
    then lost its parent's unacknowledged commit, say) changed nothing, whatever it read."""
    result = CheckResult("4 inputs are final outputs")
    committed = _committed(history, final)
    edges = uncommitted = 0
    for ex in history.executions:
        run = final.runs.get(ex.run)
        if run is None or run.status is None:
            continue  # check 1 reports a missing run
        if ex.token is None or (ex.unit, ex.token) not in committed:
            uncommitted += 1
            continue
        for parent in run.needs.get(ex.stage, []):
            edges += 1
            read = ex.inputs.get(parent)
            stored = run.outputs.get(parent)
            if read is None:
                result.violate(f"{_name(ex.unit)} attempt {ex.attempt}: recorded no input from {parent}")
            elif read != stored:
                result.violate(
                    f"{_name(ex.unit)} attempt {ex.attempt} (pid {ex.pid}) read {parent}'s output "
                    f"{read[:12]}, its final output is {(stored or 'none')[:12]}"
                )
    result.counts = {"executions": len(history.executions), "uncommitted": uncommitted, "edges": edges}
    return result


def _lost_lease(ex: Execution, committed: set[tuple[Unit, str]]) -> bool:
    """Told so, dead (no end), or its commit does not count (refused: a newer attempt held it)."""
    return ex.end is None or ex.cancelled or (ex.token is not None and (ex.unit, ex.token) not in committed)


def check_exclusive(history: History, final: FinalState) -> CheckResult:
    result = CheckResult("5 exclusive executions")
    committed = _committed(history, final)
    by_unit: dict[Unit, list[Execution]] = defaultdict(list)
    for ex in history.executions:
        by_unit[ex.unit].append(ex)
    overlaps = 0
    for unit, execs in by_unit.items():
        execs.sort(key=lambda e: e.start)
        for i, a in enumerate(execs):
            a_end = a.end if a.end is not None else float("inf")
            for b in execs[i + 1 :]:
                if b.start >= a_end:
                    continue
                overlaps += 1
                if not (_lost_lease(a, committed) or _lost_lease(b, committed)):
                    result.violate(
                        f"{_name(unit)}: attempt {a.attempt} (pid {a.pid}, token {a.token}) and attempt "
                        f"{b.attempt} (pid {b.pid}, token {b.token}) ran at once and both held their lease"
                    )
    result.counts = {"units": len(by_unit), "overlaps": overlaps}
    return result


def check_stuck(final: FinalState, grace_s: float) -> CheckResult:
    result = CheckResult("6 nothing stuck")
    waiting = 0
    for run_id, run in final.runs.items():
        for (stage, item), unit in run.units.items():
            if unit.state not in ("queued", "retrying"):
                continue
            waiting += 1
            age = final.now - (unit.since or run.created_at)
            if age > grace_s:
                result.violate(
                    f"{_name((run_id, stage, item))}: {unit.state} for {age:.1f} s (grace {grace_s:g} s)"
                )
    result.counts = {"units": sum(len(r.units) for r in final.runs.values()), "waiting": waiting}
    return result


def check(history: History, final: FinalState, grace_s: float) -> Report:
    """All six checks; `grace_s`: how long the sweep lets a unit wait before it re-sends it."""
    return Report(
        [
            check_runs(history, final),
            check_acks(history, final),
            check_once(history, final),
            check_inputs(history, final),
            check_exclusive(history, final),
            check_stuck(final, grace_s),
        ]
    )
