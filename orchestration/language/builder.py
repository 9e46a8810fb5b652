"""Build a pipeline in Python, and write it as the file it would be.

    p = (Pipeline("docs")
         .add("ingest", "docs.ingest", params={"source": "./documents"})
         .add("parse", "docs.parse", needs=["ingest"], for_each="ingest")
         .add("embed", "docs.embed", needs=["parse"], resources={"gpu": 1}))
    p.spec          # a validated PipelineSpec; every problem at once in InvalidPipeline
    p.to_yaml()     # the same pipeline as a file

This is the pure builder: it reads, validates and writes, and never talks to Redis.
`orchestration.Pipeline` (orchestration/pipeline.py) is this class plus `submit()`.

A builder holds plain data, exactly what a file would hold, and validates it with
the file's validation. Writing goes through the validated model with
`exclude_unset`, never `exclude_defaults`: a retry policy's set fields decide what
it overrides when layered, so "set to the default value" and "not set" must
survive a round trip. Strings are written so the loader reads them back as they
are: `${` becomes `$${` (except in conditions, which the loader leaves alone),
and scalars are quoted wherever the loader would read them as another type.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel

from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import load_pipeline, load_pipeline_text, validate_data
from orchestration.settings import Settings

_CONDITION_KEYS = ("when", "condition")
_NOT_YAML_TEXT = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


class Pipeline:
    """A pipeline under construction: `Pipeline(name, **pipeline_fields).add(...).add(...)`.

    `pipeline_fields` are the file's top-level keys (`version`, `variables`, `defaults`,
    `retry_policies`, `fail_fast`, `schedule`, ...); `add()` takes a stage's keys.
    """

    def __init__(self, name: str, **pipeline_fields: Any):
        stages = pipeline_fields.pop("stages", ())
        self._fields: dict[str, Any] = {"name": name, **_plain(pipeline_fields)}
        self._stages: list[dict[str, Any]] = [_plain(s) for s in stages]

    # -- building ------------------------------------------------------------------------

    def add(
        self, id: str, uses: str | None = None, needs: Iterable[str] | str | None = None, **stage_fields: Any
    ) -> Self:
        """Append a stage; only the keys given are recorded (the rest keep their defaults)."""
        stage: dict[str, Any] = {"id": id}
        if uses is not None:
            stage["uses"] = uses
        if needs is not None:
            stage["needs"] = [needs] if isinstance(needs, str) else list(needs)
        stage.update(_plain(stage_fields))
        self._stages.append(stage)
        return self

    @property
    def name(self) -> str:
        return self._fields["name"]

    def to_data(self) -> dict[str, Any]:
        """The pipeline as file data, unvalidated (what `spec` validates)."""
        return {**self._fields, "stages": [dict(s) for s in self._stages]}

    def build(self, settings: Settings | None = None) -> PipelineSpec:
        """The validated spec; raises InvalidPipeline listing every problem."""
        return validate_data(self.to_data(), source=f"Pipeline({self.name!r})", settings=settings)

    @property
    def spec(self) -> PipelineSpec:
        """The validated spec (default settings); raises InvalidPipeline listing every problem."""
        return self.build()

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> Self:
        data = dump(spec)
        return cls(**data)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        settings: Settings | None = None,
    ) -> Self:
        """Read and validate a pipeline file (YAML or JSON)."""
        return cls.from_spec(load_pipeline(path, overrides, env, settings))

    @classmethod
    def from_text(
        cls,
        text: str,
        source: str = "<string>",
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        settings: Settings | None = None,
    ) -> Self:
        """Read and validate pipeline text (YAML or JSON), as `from_file` does."""
        return cls.from_spec(load_pipeline_text(text, source, overrides, env, settings))

    # -- writing -------------------------------------------------------------------------

    def to_yaml(self) -> str:
        return to_yaml(self.spec)

    def to_json(self) -> str:
        return to_json(self.spec)

    def save(self, path: str | Path) -> Path:
        """Write the validated pipeline to `path`: JSON for a `.json` name, else YAML."""
        path = Path(path)
        text = self.to_json() if path.suffix.lower() == ".json" else self.to_yaml()
        path.write_text(text, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={[s.get('id') for s in self._stages]!r})"


def dump(spec: PipelineSpec) -> dict[str, Any]:
    """The spec as file data: only the fields that were set, JSON types."""
    return spec.model_dump(mode="json", exclude_unset=True)


def to_yaml(spec: PipelineSpec) -> str:
    return yaml.dump(
        _escaped(dump(spec)),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def to_json(spec: PipelineSpec) -> str:
    text = json.dumps(_escaped(dump(spec)), indent=2, ensure_ascii=False) + "\n"
    # JSON is read as YAML, which refuses C1 controls and reads NEL/LS/PS as line breaks
    return _NOT_YAML_TEXT.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _plain(value: Any) -> Any:
    """Models to the data a file would hold (set fields only), tuples to lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _escaped(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `${` written as `$${`, so the loader's interpolation gives back the same text."""

    def walk(value: Any, is_condition: bool = False) -> Any:
        if isinstance(value, str):
            return value if is_condition else value.replace("${", "$${")
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    def stage(raw: dict[str, Any]) -> dict[str, Any]:
        return {k: walk(v, is_condition=k in _CONDITION_KEYS) for k, v in raw.items()}

    return {k: [stage(s) for s in v] if k == "stages" else walk(v) for k, v in data.items()}


class _Dumper(yaml.SafeDumper):
    """Quotes every string the loader would read as something else (it also reads `1e-3` as a float);
    short lists and mappings of scalars are written on one line, as people write `needs: [a, b]`."""

    # PyYAML writes NEL, LS and PS unescaped when allow_unicode is on, and its reader then takes
    # them for line breaks: such a scalar is written as if allow_unicode were off (all escaped).
    def analyze_scalar(self, scalar: str) -> Any:
        with self._ascii_if(scalar):
            return super().analyze_scalar(scalar)

    def write_double_quoted(self, text: str, split: bool = True) -> None:
        with self._ascii_if(text):
            super().write_double_quoted(text, split)

    @contextlib.contextmanager
    def _ascii_if(self, text: str) -> Iterator[None]:
        saved: bool = getattr(self, "allow_unicode", False)
        self.allow_unicode = saved and not _NOT_YAML_TEXT.search(text)
        try:
            yield
        finally:
            self.allow_unicode = saved

    def represent_list(self, data: list[Any]) -> yaml.Node:
        node = super().represent_list(data)
        node.flow_style = _short(data)
        return node

    def represent_dict(self, data: dict[Any, Any]) -> yaml.Node:
        node = super().represent_dict(data)
        node.flow_style = len(data) <= 5 and _short([*data, *data.values()])
        return node


def _short(items: list[Any]) -> bool:
    scalars = all(isinstance(v, (str, int, float, bool)) or v is None for v in items)
    return (
        scalars
        and sum(len(str(v)) + 2 for v in items) <= 60
        and not any(isinstance(v, str) and ("\n" in v or not v.isprintable()) for v in items)
    )


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(dict, _Dumper.represent_dict)

_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)
