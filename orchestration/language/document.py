"""A parsed pipeline file: its data, and where each value was written (found when first asked).

Only a problem needs a line, and most files have none: recording the line of every value while
reading was a sixth of reading a 10,000-stage file. So the reader records none, and a file's
`Lines` read it again, recording them, the first time one is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestration.errors import Problem
from orchestration.language.ids import is_stage_id

Key = str | int
PathT = tuple[Key, ...]


class Lines(Mapping[PathT, int]):
    """Path -> 1-based line, worked out by `find` (a second reading of the file) when first used."""

    def __init__(self, find: Callable[[], Mapping[PathT, int]]):
        self._find: Callable[[], Mapping[PathT, int]] | None = find
        self._lines: Mapping[PathT, int] = {}

    def _found(self) -> Mapping[PathT, int]:
        if self._find is not None:
            self._lines, self._find = self._find(), None
        return self._lines

    def __getitem__(self, path: PathT) -> int:
        return self._found()[path]

    def __iter__(self) -> Iterator[PathT]:
        return iter(self._found())

    def __len__(self) -> int:
        return len(self._found())


@dataclass(frozen=True)
class Document:
    """A parsed pipeline file: its top-level mapping and where each value was written."""

    data: dict[str, Any]
    lines: Mapping[PathT, int]
    """Path -> 1-based line: a mapping entry's key line, a list item's own line; () -> 1."""
    source: str

    def line_of(self, *path: Key) -> int | None:
        """The line of `path`, or of its longest prefix that has one (e.g. a value from an alias)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def located_problem(
    data: dict[str, Any], source: str, path: PathT, line: int | None, message: str
) -> Problem:
    """A Problem naming the stage when `path` is inside `stages[i]`, and the path below it."""
    stage_id = None
    if len(path) >= 2 and path[0] == "stages" and isinstance(path[1], int):
        stages = data.get("stages")
        if isinstance(stages, list) and path[1] < len(stages) and isinstance(stages[path[1]], dict):
            candidate = stages[path[1]].get("id")
            stage_id = candidate if isinstance(candidate, str) and is_stage_id(candidate) else None
    shown = path[2:] if stage_id is not None else path
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in shown).lstrip(".")
    return Problem(f"{where}: {message}" if where else message, stage_id=stage_id, line=line, source=source)
