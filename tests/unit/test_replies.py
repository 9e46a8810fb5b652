"""Every reply shape of the attempt scripts, decoded in one place (engine/replies.py)."""

from __future__ import annotations

import pytest

from orchestration.engine.replies import (
    BadReply,
    BeginDrop,
    BeginDuplicate,
    BeginParked,
    BeginPoison,
    BeginRun,
    BeginWait,
    Commit,
    CommitVerdict,
    RetryReply,
    StartedHere,
    decode_begin,
    decode_claim,
    decode_finish,
    decode_retry,
    inputs_of,
)


@pytest.mark.parametrize(
    ("raw", "gated", "expected"),
    [
        (["run", 7, ['{"a":1}', "null"]], False, BeginRun("7", ['{"a":1}', "null"])),
        (["run", 7, [], "0,1"], True, BeginRun("7", [], "0,1")),
        (["run", 7, [], ""], True, BeginRun("7", [], "")),
        (["poison", 9, 5, ["1"]], False, BeginPoison("9", 5, ["1"])),
        (["poison", 9, 5, [], "1"], True, BeginPoison("9", 5, [], "1")),
        (["wait", "pool llm 4/4"], True, BeginWait("pool llm 4/4")),
        (["parked"], False, BeginParked()),
        (["drop", "no such run"], False, BeginDrop("no such run")),
        (["dup", "already succeeded"], False, BeginDuplicate("already succeeded")),
    ],
)
def test_begin_replies(raw, gated, expected):
    assert decode_begin(raw, gated) == expected


def test_a_missing_input_is_json_null():
    assert decode_begin(["run", "3", [None, "2"]]).inputs == ["null", "2"]


def test_inputs_are_named_by_the_stages_asked_for():
    assert inputs_of(BeginRun("1", ["[1]", "2"]), ["a", "b"]) == {"a": "[1]", "b": "2"}


@pytest.mark.parametrize(
    "raw",
    [None, [], ["run"], ["run", 1], ["run", 1, [], "x"], ["bogus", 1], ["wait"], ["parked", 1], "run", 3],
)
def test_begin_refuses_what_it_does_not_know(raw):
    with pytest.raises(BadReply, match="begin.lua"):
        decode_begin(raw)


def test_a_gated_reply_without_its_devices_is_refused():
    with pytest.raises(BadReply):
        decode_begin(["run", 7, []], gated=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (["ok", 0, "running", ["b", "c"], [], ""], Commit(CommitVerdict.OK, False, "running", ["b", "c"])),
        (["ok", 1, "succeeded", [], [], ""], Commit(CommitVerdict.OK, True, "succeeded")),
        (
            ["ok", 1, "failed", [], ["t1", "t2"], ""],
            Commit(CommitVerdict.OK, True, "failed", revoke=["t1", "t2"]),
        ),
        (["item", 0, "running", [], [], "4"], Commit(CommitVerdict.ITEM, False, "running", next_item=4)),
        (["item", 0, "running", [], [], ""], Commit(CommitVerdict.ITEM, False, "running")),
        (["stale", 0, "", [], [], ""], Commit(CommitVerdict.STALE)),
        (["late", 0, "", [], [], ""], Commit(CommitVerdict.LATE)),
        (["already", 0, "", [], [], ""], Commit(CommitVerdict.ALREADY)),
        (
            ["invalid", 0, "context write #1 is malformed", [], [], ""],
            Commit(CommitVerdict.INVALID, reason="context write #1 is malformed"),
        ),
        (["ok", 0, "running", [], [], "", ""], Commit(CommitVerdict.OK, False, "running")),
        (
            ["ok", 0, "running", ["c"], [], "", ["b", "12.1700000000123456", ['{"x":1}', "null"]]],
            Commit(
                CommitVerdict.OK,
                False,
                "running",
                ["c"],
                in_place=StartedHere("b", BeginRun("12.1700000000123456", ['{"x":1}', "null"])),
            ),
        ),
        (
            ["item", 0, "running", [], [], "", ["fan", "13.1700000000123456", []]],
            Commit(
                CommitVerdict.ITEM,
                False,
                "running",
                in_place=StartedHere("fan", BeginRun("13.1700000000123456", [])),
            ),
        ),
    ],
)
def test_finish_replies(raw, expected):
    assert decode_finish(raw) == expected


def test_which_verdicts_mean_the_commit_is_in():
    assert decode_finish(["ok", 0, "running", [], [], ""]).committed
    assert decode_finish(["item", 0, "running", [], [], ""]).committed
    assert decode_finish(["already", 0, "", [], [], ""]).committed
    assert not decode_finish(["stale", 0, "", [], [], ""]).committed
    assert not decode_finish(["invalid", 0, "why", [], [], ""]).committed


@pytest.mark.parametrize(
    "raw",
    [
        None,
        ["ok"],
        ["maybe", 0, "", [], [], ""],
        ["ok", 0, "", [], []],
        ["ok", 0, "", [], [], "", ["b", "1.2"]],  # a child started in place without its inputs
        ["ok", 0, "", [], [], "", "b", "extra"],
    ],
)
def test_finish_refuses_what_it_does_not_know(raw):
    with pytest.raises(BadReply, match="finish.lua"):
        decode_finish(raw)


def test_retry_replies():
    assert decode_retry(["ok", 1700000000123]) == RetryReply(True, 1700000000123)
    assert decode_retry(["stale"]) == RetryReply(False)
    for raw in (None, ["ok"], ["stale", 1], "ok"):
        with pytest.raises(BadReply, match="retry.lua"):
            decode_retry(raw)


def test_claim_reply():
    assert decode_claim(1700000000123) == 1700000000123
    for raw in (None, "1", True, ["1"]):
        with pytest.raises(BadReply, match="claim.lua"):
            decode_claim(raw)
