"""A plan past PLAIN_ROWS stages is printed as plain aligned text: each column as wide as its
widest cell, `#` and `level` to the right, the rest to the left, one line per stage."""

from __future__ import annotations

from click.testing import CliRunner

from orchestration.cli.main import cli
from orchestration.cli.plan import PLAIN_ROWS, plain_lines

HEADINGS = ["#", "stage", "type", "needs", "queue", "retry", "timeout", "fan-out", "level", "critical path"]


def aligned(title: str, headings: list[str], rows: list[tuple[str, ...]]) -> list[str]:
    """What plain_lines prints, cell by cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]

    def line(cells) -> str:
        return "  ".join(
            c.rjust(w) if i in (0, 8) else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return [
        title,
        line(headings).rstrip(),
        "  ".join("-" * w for w in widths),
        *(line(r).rstrip() for r in rows),
    ]


def test_plain_lines_align_every_column():
    rows = [
        ("1", "a", "noop", "", "cpu", "none", "-", "", "0", "●"),
        ("10", "étape-{x}", "shell", "a, b +2", "gpu", "3× exponential 2s", "1h", "matrix ×4", "12", ""),
        ("2", "b" * 40, "noop", "a", "cpu", "none", "-", "for_each a ≤3", "1", "●", "pool llm (4)"),
    ]
    headings = HEADINGS + ["limits"]
    rows = [r + ("",) * (len(headings) - len(r)) for r in rows]
    assert plain_lines("p 1: 3 stages", headings, rows) == aligned("p 1: 3 stages", headings, rows)


def test_a_large_plan_prints_one_plain_line_per_stage(tmp_path):
    count = PLAIN_ROWS + 1
    needs = [""] + [f", needs: [s{i - 1:04d}]" for i in range(1, count)]
    stages = "\n".join(f"  - {{id: s{i:04d}, uses: noop{needs[i]}}}" for i in range(count))
    path = tmp_path / "large.yaml"
    path.write_text(f"name: large\nversion: '1'\nstages:\n{stages}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["plan", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"large 1: {count} stages"
    assert lines[1].split() == HEADINGS[:-1] + ["critical", "path"]
    assert lines[3].split() == ["1", "s0000", "noop", "cpu", "none", "-", "0", "●"]
    assert lines[3 + count - 1].split()[:2] == [str(count), f"s{count - 1:04d}"]
    assert lines[-1].startswith("estimated makespan: ")
