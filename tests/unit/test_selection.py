"""Stage selection (`--select`): ids, globs, tags, order ranges, exclusions, upstream closure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestration.errors import InvalidPipeline, SelectionError
from orchestration.language.selection import Selectable, select

S = Selectable

# ingest → parse → normalize → extract → embed → build-graph, plus a report on the side
DOCS = [
    S("ingest", tags=("io",), order=10),
    S("parse", ("ingest",), order=20),
    S("normalize", ("parse",), order=30),
    S("extract", ("normalize",), tags=("nlp",), order=40),
    S("embed", ("extract",), tags=("gpu", "nlp"), order=50),
    S("build-graph", ("embed", "extract"), order=60),
    S("report", ("build-graph",), tags=("io",), order=60),
]


def problem_of(expression, stages=DOCS, only=False):
    with pytest.raises(SelectionError) as caught:
        select(stages, expression, only=only)
    [problem] = caught.value.problems
    return problem.message


# --- what each term selects ----------------------------------------------------------------


def test_an_id_selects_that_stage_and_what_it_needs():
    assert select(DOCS, "normalize") == ["ingest", "parse", "normalize"]


def test_only_drops_the_stages_it_needs():
    assert select(DOCS, "normalize", only=True) == ["normalize"]


def test_a_glob_selects_matching_ids_case_sensitively():
    assert select(DOCS, "*a*", only=True) == ["parse", "normalize", "extract", "build-graph"]
    assert select(DOCS, "e????", only=True) == ["embed"]
    assert select(DOCS, "[pr]*", only=True) == ["parse", "report"]
    assert problem_of("Ingest*").startswith("'Ingest*' matches no stage")


def test_a_tag_selects_every_stage_with_it():
    assert select(DOCS, "tag:nlp", only=True) == ["extract", "embed"]
    assert select(DOCS, "tag:io", only=True) == ["ingest", "report"]


def test_an_order_range_includes_both_ends():
    assert select(DOCS, "20-40", only=True) == ["parse", "normalize", "extract"]
    assert select(DOCS, "55 - 60", only=True) == ["build-graph", "report"]


def test_a_single_number_selects_that_order():
    assert select(DOCS, "60", only=True) == ["build-graph", "report"]


def test_an_id_wins_over_an_order_of_the_same_spelling():
    stages = [S("10", order=20), S("a", order=10), S("10-20", order=99)]
    assert select(stages, "10") == ["10"]
    assert select(stages, "10-20") == ["10-20"]
    assert select(stages, "20") == ["10"]


def test_terms_are_a_union_in_file_order_whatever_the_expression_order():
    assert select(DOCS, " report , ingest ,tag:gpu", only=True) == ["ingest", "embed", "report"]


def test_upstream_closure_follows_every_branch():
    assert select(DOCS, "build-graph") == ["ingest", "parse", "normalize", "extract", "embed", "build-graph"]


# --- exclusions ------------------------------------------------------------------------------


def test_only_exclusions_start_from_every_stage():
    assert select(DOCS, "!report, !tag:gpu") == ["ingest", "parse", "normalize", "extract", "build-graph"]


def test_an_exclusion_wins_over_the_upstream_closure():
    assert select(DOCS, "normalize, !ingest") == ["parse", "normalize"]


def test_an_exclusion_wins_over_a_positive_term():
    assert select(DOCS, "tag:nlp, !embed") == ["ingest", "parse", "normalize", "extract"]


def test_every_kind_of_term_can_be_excluded():
    assert select(DOCS, "*, !pa*, !10, !tag:gpu, !50-60") == ["normalize", "extract"]


def test_an_exclusion_that_matches_nothing_is_allowed():
    assert select(DOCS, "ingest, !tag:slow, !nothing*") == ["ingest"]


# --- errors ------------------------------------------------------------------------------------


def test_selection_errors_are_invalid_pipeline_errors_with_exit_code_2():
    with pytest.raises(InvalidPipeline) as caught:
        select(DOCS, "nope")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("expression", ["", "   "])
def test_an_empty_expression_is_refused(expression):
    assert problem_of(expression).startswith("the selection is empty")


@pytest.mark.parametrize(("expression", "position"), [("a,,b", 2), ("ingest,", 2), (",ingest", 1), ("!", 1)])
def test_an_empty_term_is_refused(expression, position):
    stages = [S("a"), S("b"), S("ingest")]
    assert problem_of(expression, stages) == f"term {position} of '{expression}' is empty"


def test_a_term_that_matches_nothing_names_it_and_lists_the_stages():
    assert problem_of("ingets*") == (
        "'ingets*' matches no stage; stages are: ingest, parse, normalize, extract, embed, build-graph, report"
    )


def test_a_misspelt_id_gets_a_suggestion():
    assert problem_of("ingets") == (
        "'ingets' matches no stage; did you mean 'ingest'? stages are: "
        "ingest, parse, normalize, extract, embed, build-graph, report"
    )


def test_the_stage_list_stops_at_ten():
    stages = [S(f"s{i}") for i in range(25)]
    assert problem_of("x*", stages) == (
        "'x*' matches no stage; stages are: s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, ... (15 more)"
    )


def test_a_tag_that_matches_nothing_lists_the_tags():
    assert problem_of("tag:cpu") == "'tag:cpu' matches no stage; tags are: io, nlp, gpu"
    assert problem_of("tag:cpu", [S("a")]) == "'tag:cpu' matches no stage; no stage has a tag"


def test_an_order_range_that_matches_nothing_lists_the_orders():
    assert problem_of("70-80") == "'70-80' matches no stage; orders are: 10, 20, 30, 40, 50, 60"
    assert problem_of("7", [S("a")]) == "'7' matches no stage; no stage has an order"


def test_a_tag_term_needs_a_name():
    assert problem_of("tag:") == "'tag:' names no tag; write tag:NAME"


def test_a_reversed_range_is_malformed_even_as_an_exclusion():
    message = "'30-10' is an empty order range; write LOW-HIGH with LOW <= HIGH (10-30)"
    assert problem_of("30-10") == message
    assert problem_of("!30-10") == message


@pytest.mark.parametrize("term", ["a-", "-30", "10-x", "10-20-30"])
def test_a_half_range_is_malformed(term):
    assert problem_of(term).startswith(f"'{term}' is neither a stage id nor an order range LOW-HIGH")
    assert problem_of("!" + term).startswith(f"'{term}' is neither")


def test_an_id_with_a_dash_is_not_taken_for_a_range():
    assert problem_of("build-grph").startswith("'build-grph' matches no stage; did you mean 'build-graph'?")


def test_every_bad_term_is_reported_at_once():
    with pytest.raises(SelectionError) as caught:
        select(DOCS, "nope, 30-10, ingest, tag:")
    assert [p.message.split(" ")[0] for p in caught.value.problems] == ["'nope'", "'30-10'", "'tag:'"]


def test_a_selection_that_excludes_everything_is_refused():
    assert (
        problem_of("ingest, !ingest") == "'ingest, !ingest' selects no stage: its exclusions remove every one"
    )
    assert problem_of("!*").startswith("'!*' selects no stage")


# --- properties --------------------------------------------------------------------------------


@st.composite
def pipelines(draw):
    """Stages s00.. with needs only on earlier stages, plus a random subset of ids."""
    n = draw(st.integers(1, 30))
    ids = [f"s{i:02d}" for i in range(n)]
    stages = [
        S(i, tuple(draw(st.lists(st.sampled_from(ids[:j]), unique=True))) if j else ())
        for j, i in enumerate(ids)
    ]
    subset = draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
    return stages, subset


def ancestors(stages, node):
    needs = {s.id: s.needs for s in stages}
    found, frontier = set(), list(needs[node])
    while frontier:
        n = frontier.pop()
        if n not in found:
            found.add(n)
            frontier.extend(needs[n])
    return found


@given(pipelines())
def test_selecting_ids_keeps_exactly_them_and_their_ancestors(case):
    stages, subset = case
    expected = set(subset).union(*(ancestors(stages, s) for s in subset))
    assert select(stages, ",".join(subset)) == [s.id for s in stages if s.id in expected]


@given(pipelines())
def test_selecting_ids_with_only_keeps_exactly_them(case):
    stages, subset = case
    assert select(stages, ",".join(subset), only=True) == [s.id for s in stages if s.id in subset]


@given(pipelines(), st.data())
def test_exclusions_remove_their_stages_from_any_selection(case, data):
    stages, subset = case
    ids = [s.id for s in stages]
    excluded = data.draw(st.lists(st.sampled_from(ids), unique=True))
    kept = set(subset).union(*(ancestors(stages, s) for s in subset)) - set(excluded)
    expression = ",".join(subset + ["!" + e for e in excluded])
    if kept:
        assert select(stages, expression) == [i for i in ids if i in kept]
    else:
        with pytest.raises(SelectionError):
            select(stages, expression)


# --- graph operators (dbt's `+`) -------------------------------------------------------------


def test_a_trailing_plus_adds_every_stage_downstream():
    assert select(DOCS, "extract+", only=True) == ["extract", "embed", "build-graph", "report"]


def test_a_leading_plus_adds_every_stage_upstream():
    assert select(DOCS, "+normalize", only=True) == ["ingest", "parse", "normalize"]


def test_a_number_limits_how_many_levels_a_plus_reaches():
    assert select(DOCS, "1+normalize", only=True) == ["parse", "normalize"]
    assert select(DOCS, "2+normalize", only=True) == ["ingest", "parse", "normalize"]
    assert select(DOCS, "extract+1", only=True) == ["extract", "embed", "build-graph"]


def test_plus_on_both_sides_and_on_tags_and_globs():
    assert select(DOCS, "+embed+", only=True) == [s.id for s in DOCS]
    assert select(DOCS, "tag:gpu+", only=True) == ["embed", "build-graph", "report"]
    assert select(DOCS, "build*+", only=True) == ["build-graph", "report"]


def test_downstream_stages_still_bring_what_they_need_unless_only():
    # build-graph needs embed and extract; report needs build-graph: all upstream comes along
    assert select(DOCS, "embed+") == [s.id for s in DOCS]


def test_an_excluded_plus_removes_the_stage_and_its_descendants():
    assert select(DOCS, "!embed+") == ["ingest", "parse", "normalize", "extract"]


@pytest.mark.parametrize("term", ["+", "++", "2+", "metrics++"])
def test_a_stray_plus_is_named(term):
    message = problem_of(term)
    assert f"'{term}'" in message
    assert "`metrics+`" in message or "matches no stage" in message
