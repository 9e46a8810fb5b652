"""The failover checker catches each kind of violation, on small synthetic histories (no Redis)."""

from __future__ import annotations

import json
from dataclasses import replace

from .checker import check
from .final_state import FinalRun, FinalState, FinalUnit
from .history import Ack, Execution, History, executions_from, load, text_hash, value_hash

GRACE_S = 30.0
A_OUT = json.dumps({"stage": "a", "nonce": "n1"}, separators=(",", ":"))
B_OUT = json.dumps({"stage": "b", "nonce": "n2"}, separators=(",", ":"))


def _exec(stage: str, token: str, start: float, end: float | None, **kw) -> Execution:
    fields = {
        "exec_id": f"{stage}-{token}-{start}",
        "run": "r1",
        "stage": stage,
        "item": None,
        "attempt": 1,
        "token": token,
        "pid": 100,
        "start": start,
        "inputs": {},
        "end": end,
        "output_hash": None,
        **kw,
    }
    return Execution(**fields)


def _ack(stage: str, token: str, output: str | None, outcome: str = "succeeded", attempt: int = 1) -> Ack:
    return Ack("r1", stage, None, attempt, token, outcome, None if output is None else text_hash(output), 1.0)


def given() -> tuple[History, FinalState]:
    """Run r1: a → b, each run once, both acknowledged, both in the final state."""
    a_in = value_hash(json.loads(A_OUT))
    history = History(
        executions=[
            _exec("a", "1", 10.0, 11.0, output_hash=text_hash(A_OUT)),
            _exec("b", "2", 11.5, 12.0, inputs={"a": a_in}, output_hash=text_hash(B_OUT)),
        ],
        acks=[_ack("a", "1", A_OUT), _ack("b", "2", B_OUT)],
        given_runs={"r1"},
    )
    run = FinalRun(
        status="succeeded",
        created_at=9.0,
        finished_at=12.1,
        units={
            ("a", None): FinalUnit("succeeded", "1", 1, text_hash(A_OUT), 9.0),
            ("b", None): FinalUnit("succeeded", "2", 1, text_hash(B_OUT), 11.0),
        },
        outputs={"a": a_in, "b": value_hash(json.loads(B_OUT))},
        needs={"a": [], "b": ["a"]},
    )
    return history, FinalState({"r1": run}, now=20.0)


def test_a_clean_history_holds_every_check_and_says_what_it_looked_at():
    history, final = given()
    report = check(history, final, GRACE_S)
    assert report.held, str(report)
    assert report.by_name("1 runs final").counts == {"given": 1, "final": 1, "succeeded": 1}
    assert report.by_name("2 acks durable").counts["terminal"] == 2
    assert report.by_name("4 inputs are final outputs").counts["edges"] == 1


def test_a_lost_commit_redone_with_another_output_fails_check_2():
    # Given b's acknowledged commit lost in a failover, and b run again (a new nonce, a new token)
    history, final = given()
    redone = json.dumps({"stage": "b", "nonce": "n3"}, separators=(",", ":"))
    final.runs["r1"].units[("b", None)] = FinalUnit("succeeded", "3", 2, text_hash(redone), 11.0)
    report = check(history, final, GRACE_S)
    assert report.failed() == {"2 acks durable"}
    assert "r1/b attempt 1 (token 2): acknowledged output" in report.by_name("2 acks durable").violations[0]


def test_a_lost_commit_whose_unit_still_runs_fails_check_2():
    history, final = given()
    final.runs["r1"].units[("b", None)] = FinalUnit("running", "2", 1, None, 11.0)
    final.runs["r1"].status = "running"
    report = check(history, final, GRACE_S)
    assert {"1 runs final", "2 acks durable"} <= report.failed()
    assert "acknowledged succeeded, final state is running" in report.by_name("2 acks durable").violations[0]


def test_a_lost_run_fails_check_1():
    history, final = given()
    history.given_runs.add("r2")
    final.runs["r2"] = FinalRun(status=None)
    report = check(history, final, GRACE_S)
    assert report.failed() == {"1 runs final"}
    assert report.by_name("1 runs final").violations == ["run r2 was given to a client but does not exist"]


def test_a_token_given_to_two_executions_fails_check_3():
    # Given the fence counter went back in a failover: b's second execution got token 2 again
    history, final = given()
    history.executions.append(_exec("b", "2", 20.0, 21.0, attempt=2, inputs=history.executions[1].inputs))
    report = check(history, final, GRACE_S)
    assert "3 once per unit" in report.failed()
    assert report.by_name("3 once per unit").violations == ["r1/b: token 2 given to 2 executions"]


def test_two_acknowledged_commits_of_one_unit_fail_check_3():
    history, final = given()
    history.acks.append(_ack("b", "7", B_OUT, attempt=2))
    report = check(history, final, GRACE_S)
    assert "3 once per unit" in report.failed()
    assert report.by_name("3 once per unit").violations[0].startswith("r1/b: acknowledged twice")


def test_a_retry_and_a_success_under_one_token_fail_check_3():
    history, final = given()
    history.acks.insert(1, _ack("b", "2", None, outcome="retrying", attempt=0))
    report = check(history, final, GRACE_S)
    assert report.by_name("3 once per unit").violations == ["r1/b: token 2 names 2 acknowledged commits"]


def test_a_child_that_read_a_lost_output_fails_check_4():
    # Given b read a's output from before a failover lost it, and a's final output is another
    history, final = given()
    final.runs["r1"].outputs["a"] = value_hash({"stage": "a", "nonce": "other"})
    report = check(history, final, GRACE_S)
    assert "4 inputs are final outputs" in report.failed()
    assert (
        "r1/b attempt 1 (pid 100) read a's output"
        in report.by_name("4 inputs are final outputs").violations[0]
    )


def test_an_execution_whose_commit_was_refused_may_have_read_anything():
    # Given a second execution of b that read a lost output of a, and committed nothing
    history, final = given()
    zombie = _exec("b", "9", 13.0, 13.5, attempt=2, inputs={"a": value_hash({"lost": True})})
    report = check(History([*history.executions, zombie], history.acks, history.given_runs), final, GRACE_S)
    assert report.held, str(report)
    assert report.by_name("4 inputs are final outputs").counts["uncommitted"] == 1


def test_two_overlapping_executions_that_both_held_their_lease_fail_check_5():
    # Given a second execution of b, while the first still ran, and both acknowledged
    history, final = given()
    b2 = _exec("b", "5", 11.8, 12.5, attempt=2, pid=200, inputs=history.executions[1].inputs)
    history.executions.append(b2)
    history.acks.append(_ack("b", "5", None, outcome="retrying", attempt=2))
    report = check(history, final, GRACE_S)
    assert "5 exclusive executions" in report.failed()
    assert report.by_name("5 exclusive executions").counts["overlaps"] == 1


def test_an_overlap_with_an_execution_that_lost_its_lease_holds():
    # Given the first execution was told its lease was lost (or died, or committed nothing)
    history, final = given()
    b2 = _exec("b", "5", 11.8, 12.5, attempt=2, pid=200, inputs=history.executions[1].inputs)
    for loser in (
        replace(b2, cancelled=True),
        replace(b2, end=None),
        b2,  # token 5 is in no ack and is not the final token: it committed nothing
    ):
        report = check(
            History([*history.executions, loser], history.acks, history.given_runs), final, GRACE_S
        )
        assert report.held, str(report)
        assert report.by_name("5 exclusive executions").counts["overlaps"] == 1


def test_a_unit_queued_past_the_grace_fails_check_6():
    history, final = given()
    final.runs["r1"].units[("b", None)] = FinalUnit("queued", None, 0, None, since=1.0)
    first = History(history.executions[:1], history.acks[:1], history.given_runs)
    report = check(first, replace(final, now=50.0), GRACE_S)
    assert "6 nothing stuck" in report.failed()
    assert report.by_name("6 nothing stuck").violations == ["r1/b: queued for 49.0 s (grace 30 s)"]
    assert check(History(), replace(final, now=5.0), GRACE_S).by_name("6 nothing stuck").held


def test_recorded_lines_are_paired_and_a_torn_last_line_is_skipped(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    start = {"event": "start", "exec": "e1", "run": "r1", "stage": "a", "item": None, "attempt": 1}
    start |= {"token": "4", "pid": 1, "t": 1.0, "inputs": {}}
    lines = [
        json.dumps(start),
        json.dumps({"event": "end", "exec": "e1", "t": 2.0, "output_hash": "h", "cancelled": False}),
        json.dumps({**start, "exec": "e2", "t": 3.0}),
        '{"event": "end", "exec": "e2", "t": 4',  # SIGKILLed mid-write
    ]
    (records / "1.jsonl").write_text("\n".join(lines))
    acks = tmp_path / "acks.jsonl"
    acks.write_text(
        json.dumps({"run": "r1", "created": True})
        + "\n"
        + json.dumps(
            {"run": "r1", "stage": "a", "item": None, "attempt": 1, "token": "4", "outcome": "succeeded"}
            | {"output_hash": "h", "t": 2.0}
        )
        + "\n"
    )
    submitted = tmp_path / "submitted.jsonl"
    submitted.write_text(json.dumps({"run": "r2", "submitted": True}) + "\n")
    history = load(records, acks, submitted)
    assert [(e.exec_id, e.end) for e in history.executions] == [("e1", 2.0), ("e2", None)]
    assert history.given_runs == {"r1", "r2"}
    assert [(a.stage, a.token, a.outcome) for a in history.acks] == [("a", "4", "succeeded")]
    assert executions_from([]) == []
