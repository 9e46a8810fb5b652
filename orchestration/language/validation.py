"""Turn a pipeline document into a PipelineSpec, reporting every problem at once.

Field checks come from the pydantic models (and `field_checks`); the checks across stages
(`cross_stage`) run even when some stages failed their field checks, on what can be read of
them, so one file run shows the cycle, the missing dependency and the bad duration together,
each with its stage id and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language.cross_stage import StageView, cross_stage_problems
from orchestration.language.document import Document
from orchestration.language.field_checks import (
    LineOf,
    field_problems,
    raw_stages,
    size_problems,
    value_problems,
)
from orchestration.language.limits import Limits
from orchestration.language.links import link_problems
from orchestration.language.loader import gc_paused, load_document, load_text
from orchestration.language.spec import PipelineSpec
from orchestration.settings import Settings


def load_pipeline(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> PipelineSpec:
    """Read, interpolate and validate a pipeline file; raise InvalidPipeline with every problem.

    The limits are `settings`' (docs/pipeline-file.md, "Limits"); without settings, the environment's."""
    settings = settings or Settings()
    document = load_document(path, overrides=overrides, env=env, limits=Limits.from_settings(settings))
    with gc_paused():
        return validate_document(document, settings)


def load_pipeline_text(
    text: str,
    source: str = "<string>",
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> PipelineSpec:
    settings = settings or Settings()
    document = load_text(text, source, overrides=overrides, env=env, limits=Limits.from_settings(settings))
    return validate_document(document, settings)


def validate_document(doc: Document, settings: Settings | None = None) -> PipelineSpec:
    return validate_data(doc.data, doc.line_of, doc.source, settings)


def validate_data(
    data: Mapping[str, Any],
    line_of: LineOf | None = None,
    source: str | None = None,
    settings: Settings | None = None,
    limits: Limits | None = None,
) -> PipelineSpec:
    """Validate already-parsed data (a file's or a builder's) within `limits` (default: `settings`')."""
    line_of = line_of or (lambda *path: None)
    settings = settings or Settings()
    limits = limits or Limits.from_settings(settings)
    if not isinstance(data, Mapping):
        raise InvalidPipeline(
            [Problem("a pipeline must be a mapping (name: ..., stages: ...)", source=source)]
        )
    problems = size_problems(data, line_of, source, limits)
    if problems and len(raw_stages(data)) > limits.max_stages:
        raise InvalidPipeline(problems, source)  # fail fast: validating every stage would take long
    problems.extend(value_problems(data, line_of, source, limits))
    spec: PipelineSpec | None = None
    try:
        spec = PipelineSpec.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        problems.extend(field_problems(exc, data, line_of, source))
    views = [StageView.of(i, raw, spec) for i, raw in enumerate(raw_stages(data))]
    problems.extend(cross_stage_problems(views, data, spec, line_of, source, settings, limits))
    problems.extend(link_problems(data, line_of, source))
    if problems or spec is None:
        if not problems:  # pragma: no cover (every refusal names its field; a last line of defence)
            problems.append(Problem("the pipeline is not valid", source=source))
        raise InvalidPipeline(sorted(problems, key=lambda p: (p.line or 0, p.message)), source)
    return spec
