"""Stage selection for running part of a pipeline (`--select`).

An expression is comma-separated terms; whitespace around a term is ignored:

    ingest          an exact stage id
    ingest*         a glob over ids (fnmatch, case-sensitive: * ? [abc])
    tag:gpu         every stage with that tag
    10-30           every stage whose `order` is in the range, both ends included
    20              every stage with that `order` (when no stage has the id `20`)
    !report         any of the above, excluded

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

from orchestration.errors import Problem, SelectionError
from orchestration.language.dag import upstream

_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")
_NUMBER = re.compile(r"\d+")
_GLOB = re.compile(r"[*?\[]")
_SHOWN = 10  # names listed in a "matches no stage" message


@dataclass(frozen=True)
class Selectable:
    """What selection needs to know of a stage; `needs` are the resolved dependencies
    (for an order-based file, the ones its `order` implies)."""

    id: str
    needs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    order: int | None = None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = len(names) - _SHOWN
    return f"{shown}, ... ({more} more)" if more > 0 else shown


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
            f"stages are: {_listing([s.id for s in stages])}"
        )
    return set()


def _matches_nothing(stages: Sequence[Selectable], term: str) -> str:
    """Why a term found no stage, with what it could have named."""
    if term.startswith("tag:"):
        tags = list(dict.fromkeys(t for s in stages for t in s.tags))
        known = f"tags are: {_listing(tags)}" if tags else "no stage has a tag"
    elif _RANGE.fullmatch(term) or _NUMBER.fullmatch(term):
        orders = sorted({s.order for s in stages if s.order is not None})
        known = f"orders are: {_listing([str(o) for o in orders])}" if orders else "no stage has an order"
    else:
        ids = [s.id for s in stages]
        known = f"stages are: {_listing(ids)}"
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
            found = _match(stages, term)
        except _Malformed as malformed:
            problems.append(Problem(str(malformed)))
            continue
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
