"""What docs/pipeline-file.md promises about run semantics, read from the file itself, so the
docs cannot drift from what tests/integration/test_edges.py shows the code doing."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipeline-file.md"


def stage_field_row(name: str) -> str:
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, rows
    return rows[0]


def test_the_critical_row_says_a_failed_non_critical_stages_dependents_run():
    meaning = stage_field_row("critical").split("|")[4]
    # the part about `false` (before what `true` means)
    when_false = re.split(r"`true`:", meaning, maxsplit=1)[0]
    assert "`false`" in when_false
    assert "dependents still run" in when_false
    assert "`null`" in when_false  # what they read as its output
    assert "does not fail" in when_false  # the run
    assert "status" in when_false and "failed" in when_false  # status shows it failed, with its error
    assert "upstream_failed" not in when_false
    assert "continue_on_error" in when_false


def test_the_critical_prose_agrees_with_the_row():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Timeouts, fallback, cache, critical", 1)[1].split("\n## ", 1)[0]
    bullet = section.split("- `critical: false`", 1)[1].split("\n- ", 1)[0]
    assert "dependents still run" in bullet and "`null`" in bullet and "upstream_failed" not in bullet
    assert "can still succeed" in bullet
