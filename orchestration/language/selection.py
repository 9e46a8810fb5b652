"""Stage selection for running part of a pipeline (`--select`).

An expression is comma-separated terms; whitespace around a term is ignored:

    ingest          an exact stage id
    ingest*         a glob over ids (fnmatch, case-sensitive: * ? [abc])
    tag:gpu         every stage with that tag
    10-30           every stage whose `order` is in the range, both ends included
    20              every stage with that `order` (when no stage has the id `20`)
    !report         any of the above, excluded

Graph operators, as dbt writes them, around any term but an exclusion's:

    metrics+        the stage and every stage downstream of it (that needs it, directly or not)
    +metrics        the stage and every stage upstream of it
    2+metrics       the stage and its upstream stages up to two levels away
    metrics+1       the stage and the stages that need it directly
    +metrics+       both directions

The result is the union of the positive terms (every stage if there are only
exclusions), plus everything those stages need unless `only`, minus the
exclusions: an exclusion wins even over a needed stage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from fnmatch import fnmatchcase

from orchestration.errors import Problem, SelectionError, listing
from orchestration.language.dag import children, upstream

_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_NUMBER = re.compile(r"\d+")
_GLOB = re.compile(r"[*?\[]")
# [N]+TERM+[N]: stage ids hold no `+`, so a `+` is always an operator
_GRAPH_OPS = re.compile(r"(?:(?P<up>\d*)\+)?(?P<term>[^+]*)(?:\+(?P<down>\d*))?")


@dataclass(frozen=True)
class Selectable:
    """What selection needs to know of a stage; `needs` are the resolved dependencies
    (for an order-based file, the ones its `order` implies)."""

    id: str
    needs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    order: int | None = None


class _Malformed(ValueError):
    """A term that cannot be read, whatever the stages are."""


def _match(stages: Sequence[Selectable], term: str) -> set[str]:
    """The ids a term (without its `!`) selects; raises `_Malformed` if it cannot be read."""
    if term.startswith("tag:"):
        tag = term[4:].strip()
        if not tag:
            raise _Malformed(f"'{term}' names no tag; write tag:NAME")
        return {s.id for s in stages if tag in s.tags}
    if any(s.id == term for s in stages):
        return {term}
    if _GLOB.search(term):
        return {s.id for s in stages if fnmatchcase(s.id, term)}
    if bounds := _RANGE.fullmatch(term):
        low, high = int(bounds[1]), int(bounds[2])
        if low > high:
            raise _Malformed(
                f"'{term}' is an empty order range; write LOW-HIGH with LOW <= HIGH ({high}-{low})"
            )
        return {s.id for s in stages if s.order is not None and low <= s.order <= high}
    if _NUMBER.fullmatch(term):
        return {s.id for s in stages if s.order == int(term)}
    before, dash, after = term.partition("-")
    if dash and any(not side.strip() or side.strip().isdigit() for side in (before, after)):
        raise _Malformed(
            f"'{term}' is neither a stage id nor an order range LOW-HIGH such as 10-30; "
            f"stages are: {listing([s.id for s in stages])}"
        )
    return set()


def _within(step: dict[str, list[str]], start: set[str], depth: int | None) -> set[str]:
    """The stages reached from `start` by up to `depth` steps (every one when None), `start` too."""
    reached, frontier, level = set(start), set(start), 0
    while frontier and (depth is None or level < depth):
        frontier = {n for s in frontier for n in step.get(s, ())} - reached
        reached |= frontier
        level += 1
    return reached


def _operators(term: str) -> tuple[str, int | None | bool, int | None | bool]:
    """(the term without its graph operators, upstream depth, downstream depth): a depth is
    False without that operator, None for every level; raises `_Malformed` for a stray `+`."""
    found = _GRAPH_OPS.fullmatch(term)
    if found is None or not found["term"].strip():
        raise _Malformed(
            f"'{term}' is not a selection term: a `+` goes before or after a stage id, glob or tag "
            "(`metrics+`, `+metrics`, `2+metrics`)"
        )
    up: int | None | bool = False if found["up"] is None else (int(found["up"]) if found["up"] else None)
    down: int | None | bool = (
        False if found["down"] is None else (int(found["down"]) if found["down"] else None)
    )
    return found["term"].strip(), up, down


def _matches_nothing(stages: Sequence[Selectable], term: str) -> str:
    """Why a term found no stage, with what it could have named."""
    if term.startswith("tag:"):
        tags = list(dict.fromkeys(t for s in stages for t in s.tags))
        known = f"tags are: {listing(tags)}" if tags else "no stage has a tag"
    elif _RANGE.fullmatch(term) or _NUMBER.fullmatch(term):
        orders = sorted({s.order for s in stages if s.order is not None})
        known = f"orders are: {listing([str(o) for o in orders])}" if orders else "no stage has an order"
    else:
        ids = [s.id for s in stages]
        known = f"stages are: {listing(ids)}"
        if not _GLOB.search(term) and (close := get_close_matches(term, ids, n=1)):
            known = f"did you mean '{close[0]}'? {known}"
    return f"'{term}' matches no stage; {known}"


def select(stages: Sequence[Selectable], expression: str, only: bool = False) -> list[str]:
    """The ids `expression` selects, in file order; raises `SelectionError` naming every bad term.

    Unless `only`, the stages the selected ones need (directly or not) are kept too.
    An exclusion that matches nothing is not an error (a generic `!tag:slow` may
    find nothing in some pipelines); a positive term that matches nothing is.
    """
    if not expression.strip():
        raise SelectionError(Problem("the selection is empty; give ids, globs, tag:NAME or order ranges"))
    chosen: set[str] = set()
    excluded: set[str] = set()
    positive = False
    problems: list[Problem] = []
    for position, raw in enumerate(expression.split(","), start=1):
        term = raw.strip()
        negated = term.startswith("!")
        if negated:
            term = term[1:].strip()
        if not term:
            problems.append(Problem(f"term {position} of '{expression}' is empty"))
            continue
        try:
            term, up, down = _operators(term)
            found = _match(stages, term)
        except _Malformed as malformed:
            problems.append(Problem(str(malformed)))
            continue
        deps = {s.id: s.needs for s in stages}
        if up is not False:
            found = _within({sid: list(needs) for sid, needs in deps.items()}, found, up)
        if down is not False:
            found = _within(children(deps), found, down)
        if negated:
            excluded |= found
        else:
            positive = True
            chosen |= found
            if not found:
                problems.append(Problem(_matches_nothing(stages, term)))
    if problems:
        raise SelectionError(problems)
    if not positive:
        chosen = {s.id for s in stages}
    if not only:
        chosen |= upstream({s.id: s.needs for s in stages}, chosen)
    chosen -= excluded
    if not chosen:
        raise SelectionError(Problem(f"'{expression}' selects no stage: its exclusions remove every one"))
    return [s.id for s in stages if s.id in chosen]
