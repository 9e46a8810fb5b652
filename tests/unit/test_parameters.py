"""No function of the engine (and of the worker's attempt path) takes more than 8 parameters:
what travels together is a typed object (engine/commit.py's requests, StageMessage)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MOST = 8
SCOPE = [
    *(ROOT / "orchestration" / "engine").rglob("*.py"),
    ROOT / "workers" / "attempt.py",
    ROOT / "workers" / "execution.py",
]


def counts(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            n = len(names) + bool(a.vararg) + bool(a.kwarg)
            if names and names[0].arg in ("self", "cls"):
                n -= 1
            found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", n))
    return found


def test_no_engine_function_takes_more_than_eight_parameters():
    over = [f"{where} takes {n}" for path in sorted(SCOPE) for where, n in counts(path) if n > MOST]
    assert not over, "\n".join(over)


def test_finish_takes_one_typed_argument():
    from orchestration.engine.transitions import Transitions

    path = ROOT / "orchestration" / "engine" / "transitions.py"
    assert {w.split()[-1]: n for w, n in counts(path)}["finish"] == 1
    assert Transitions.finish.__annotations__["req"] == "CommitRequest"
