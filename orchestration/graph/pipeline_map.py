"""The graph of pipelines and assets as a picture: Mermaid or Graphviz DOT (`chordflow pipelines graph`).

Pipelines are boxes and assets cylinders. Edges run the way data and time flow:

- `data-daily → scenarios-weekly`, labelled `depends_on ≤ 26h`: it needs the other's success;
- a dashed edge labelled `on success`: the other's success triggers it;
- `data-daily → market_data → scenarios-weekly`: what a pipeline provides and what one requires.

A name that a link mentions but no registered pipeline has is drawn dashed, `(not registered)`.
`states` (pipeline -> fresh | stale) colours the boxes. Every label is escaped and node names are
generated (`p0`, `a0`, ...), as in `render.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestration.graph.render import _dot_string, _mermaid_text
from orchestration.language.durations import describe_seconds
from orchestration.language.spec import PipelineSpec

FRESHNESS_COLOURS = {"fresh": "#a3cfbb", "stale": "#f1aeb5"}
Edge = tuple[str, str, str, bool]  # (from node, to node, label, dashed)


def _layout(
    specs: Mapping[str, PipelineSpec],
) -> tuple[dict[str, str], dict[str, str], list[str], list[Edge]]:
    """(pipeline -> node, asset -> node, names not registered, edges)."""
    pipelines: dict[str, str] = {}
    assets: dict[str, str] = {}
    missing: list[str] = []

    def pipeline(name: str) -> str:
        if name not in pipelines:
            pipelines[name] = f"p{len(pipelines)}"
            if name not in specs:
                missing.append(name)
        return pipelines[name]

    def asset(name: str) -> str:
        if name not in assets:
            assets[name] = f"a{len(assets)}"
        return assets[name]

    for name in specs:
        pipeline(name)
    edges: list[Edge] = []
    for name, spec in specs.items():
        for out in spec.provides:
            edges.append((pipeline(name), asset(out), "", False))
    for name, spec in specs.items():
        here = pipeline(name)
        for dep in spec.depends_on:
            limit = f" ≤ {describe_seconds(dep.max_age)}" if dep.max_age is not None else ""
            edges.append((pipeline(dep.pipeline), here, f"depends_on{limit}", False))
        for trigger in spec.triggers:
            edges.append((pipeline(trigger.on_success_of), here, "on success", True))
        for req in spec.requires:
            limit = f"≤ {describe_seconds(req.max_age)}" if req.max_age is not None else ""
            edges.append((asset(req.asset), here, limit, False))
    return pipelines, assets, missing, edges


def _pipeline_label(name: str, spec: PipelineSpec | None, state: str | None) -> list[str]:
    lines = [name]
    if spec is None:
        lines.append("(not registered)")
    elif spec.max_age is not None:
        lines.append(f"max_age {describe_seconds(spec.max_age)}")
    if state:
        lines.append(state)
    return lines


def to_mermaid(specs: Mapping[str, PipelineSpec], states: Mapping[str, str] | None = None) -> str:
    """A Mermaid flowchart of the pipelines `specs` (name -> spec) and their assets."""
    states = states or {}
    pipelines, assets, missing, edges = _layout(specs)
    out = ["%% pipelines and assets", "flowchart LR"]
    for name, node in pipelines.items():
        label = "<br/>".join(
            _mermaid_text(line) for line in _pipeline_label(name, specs.get(name), states.get(name))
        )
        out.append(f'    {node}["{label}"]')
    for name, node in assets.items():
        out.append(f'    {node}[("{_mermaid_text(name)}")]')
    for source, target, label, dashed in edges:
        arrow = "-.->" if dashed else "-->"
        out.append(
            f'    {source} {arrow}|"{_mermaid_text(label)}"| {target}'
            if label
            else f"    {source} {arrow} {target}"
        )
    out.append("    classDef asset fill:#fff3cd,color:#000")
    if assets:
        out.append(f"    class {','.join(assets.values())} asset")
    for state, colour in FRESHNESS_COLOURS.items():
        members = [pipelines[n] for n in pipelines if states.get(n) == state]
        if members:
            out.append(f"    classDef {state} fill:{colour},color:#000")
            out.append(f"    class {','.join(members)} {state}")
    for name in missing:
        out.append(f"    style {pipelines[name]} stroke-dasharray: 5 5")
    return "\n".join(out) + "\n"


def to_dot(specs: Mapping[str, PipelineSpec], states: Mapping[str, str] | None = None) -> str:
    """A Graphviz digraph of the pipelines `specs` (name -> spec) and their assets."""
    states = states or {}
    pipelines, assets, missing, edges = _layout(specs)
    out = [
        'digraph "pipelines" {',
        "    rankdir=LR;",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    for name, node in pipelines.items():
        attrs = [
            f"label={_dot_string(chr(10).join(_pipeline_label(name, specs.get(name), states.get(name))))}"
        ]
        if states.get(name) in FRESHNESS_COLOURS:
            attrs.append(f'fillcolor="{FRESHNESS_COLOURS[states[name]]}"')
        if name in missing:
            attrs.append('style="rounded,dashed"')
        out.append(f"    {node} [{', '.join(attrs)}];")
    for name, node in assets.items():
        out.append(
            f'    {node} [label={_dot_string(name)}, shape=cylinder, style=filled, fillcolor="#fff3cd"];'
        )
    for source, target, label, dashed in edges:
        attrs = [f"label={_dot_string(label)}"] if label else []
        if dashed:
            attrs.append("style=dashed")
        out.append(f"    {source} -> {target}{' [' + ', '.join(attrs) + ']' if attrs else ''};")
    out.append("}")
    return "\n".join(out) + "\n"
