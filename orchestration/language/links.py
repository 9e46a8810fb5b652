"""Checks on a pipeline's links to other pipelines: `depends_on`, `requires`, `provides`, `triggers`.

One file can only be checked against itself here (a pipeline that needs or triggers itself, a
name given twice, an asset it both requires and provides); links across the registered
pipelines (cycles) are checked when a pipeline is registered (`fleet/pipelines.py`). The
fields' own shapes are checked by the models (`options.py`). Like the checks across stages,
these read the raw data leniently, so they are reported with the field problems of the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestration.errors import Problem
from orchestration.language.field_checks import LineOf

# field -> the key that names the linked pipeline or asset in the field's mapping form
NAMED_BY = {"depends_on": "pipeline", "requires": "asset", "provides": "", "triggers": "on_success_of"}


def names(data: Mapping[str, Any], field: str) -> list[tuple[int, str]]:
    """(index, name) of each entry of `field` whose name can be read: a bare name, or the name
    key of a mapping (`{pipeline: NAME}`, `{asset: NAME}`, `{on_success_of: NAME}`)."""
    entries = data.get(field)
    if not isinstance(entries, list):
        return []
    found = []
    for i, entry in enumerate(entries):
        if isinstance(entry, Mapping) and NAMED_BY[field]:
            entry = entry.get(NAMED_BY[field])
        if isinstance(entry, str):
            found.append((i, entry))
    return found


def link_problems(data: Mapping[str, Any], line_of: LineOf, source: str | None) -> list[Problem]:
    """Every problem of the pipeline's links to itself, each with its line."""
    problems: list[Problem] = []
    own = data.get("name")
    if own is None and isinstance(data.get("metadata"), Mapping):
        own = data["metadata"].get("name")

    def add(message: str, *path: Any) -> None:
        problems.append(Problem(message, line=line_of(*path), source=source))

    for i, name in names(data, "depends_on"):
        if name == own:
            add(f"depends_on: '{name}' is this pipeline itself", "depends_on", i)
    for i, name in names(data, "triggers"):
        if name == own:
            add(
                f"triggers: on_success_of '{name}' is this pipeline itself "
                "(each success would start it again)",
                "triggers",
                i,
            )
    provided = {name for _, name in names(data, "provides")}
    for i, name in names(data, "requires"):
        if name in provided:
            add(f"requires: '{name}' is an asset this pipeline provides itself", "requires", i)
    for field in NAMED_BY:
        seen: set[str] = set()
        for i, name in names(data, field):
            if name in seen:
                add(f"{field}: '{name}' is given twice", field, i)
            seen.add(name)
    return problems
