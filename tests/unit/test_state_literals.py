"""States are spelled in one place: `orchestration/states.py` (and the Lua prelude it generates).

Any other string constant equal to a state's or run status's name (outside docstrings) is a
literal that can drift from the enum. A line whose string means something else that happens to
share the spelling (a JSON-schema key, a Redis reply's field) says so with `# not a state`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from orchestration.states import RunStatus, State

ROOT = Path(__file__).resolve().parents[2]
NAMES = {s.value for s in State} | {s.value for s in RunStatus}
ALLOWED = {ROOT / "orchestration" / "states.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def literals(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        if node.value in NAMES and "# not a state" not in lines[node.lineno - 1]:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_no_state_is_spelled_outside_states_py():
    files = sorted((ROOT / "orchestration").rglob("*.py")) + sorted((ROOT / "workers").rglob("*.py"))
    found = [hit for path in files if path not in ALLOWED for hit in literals(path)]
    assert not found, "use State/RunStatus from orchestration/states.py:\n" + "\n".join(found)


def test_the_check_finds_a_literal(tmp_path):
    sample = ROOT / "orchestration" / "_literal_sample.py"
    sample.write_text('"""doc: running"""\nx = "running"\ny = "pending"  # not a state\n', encoding="utf-8")
    try:
        assert literals(sample) == ["orchestration/_literal_sample.py:2: 'running'"]
    finally:
        sample.unlink()
