"""A run graph as a picture: Mermaid flowchart, Graphviz DOT text or SVG (`chordflow graph`).

Nodes show the stage id and type, and how a stage fans out (`matrix ×4`,
`for_each items`); edges run from a needed stage to the stage that needs it.
The critical path is drawn thick. Given `states` (stage id -> state), nodes
are filled by state and the state is written in the label too, so the picture
reads without colour. Every id and label is escaped: node names in the output
are generated (`s0`, `s1`, ...), never taken from the file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rich.text import Text

from orchestration.states import State

if TYPE_CHECKING:  # only named in annotations: `say` needs this module, not the resolver
    from orchestration.graph.resolve import Node, RunGraph

STATE_COLOURS: dict[str, str] = {
    State.PENDING: "#eeeeee",
    State.QUEUED: "#cfe2ff",
    State.RUNNING: "#9ec5fe",
    State.RETRYING: "#ffe69c",
    State.SUCCEEDED: "#a3cfbb",
    State.FAILED: "#f1aeb5",
    State.SKIPPED: "#e2e3e5",
    State.CANCELLED: "#c4c8cb",
    State.UPSTREAM_FAILED: "#f8d7da",
    State.FALLBACK: "#fecba1",
}
CRITICAL_COLOUR = "#d63384"


# -- text for a terminal -------------------------------------------------------------------

# C0 controls, DEL and C1 controls (ESC starts escape sequences; U+009B is a one-character CSI)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def terminal_safe(text: object, keep: str = "\n\t") -> str:
    """`text` with every control character but those in `keep` written as a visible escape
    (ESC → `\\x1b`), so a name, an error or a log line cannot move the cursor, clear the
    screen or retitle the terminal."""
    text = str(text)
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else _visible(m), text)


def term(text: object, style: str = "") -> Text:
    """A rich Text of `text` made terminal-safe: rich reads no `[markup]` in it and no control
    character reaches the terminal (a table cell or title of user-supplied text)."""
    return Text(terminal_safe(text, keep=""), style=style)


def term_lines(text: object, style: str = "") -> Text:
    """`term` of a cell of several lines: each line made terminal-safe, the lines kept (a table
    cell listing one thing a line would otherwise show a literal `\\x0a`)."""
    lines = str(text).split("\n")
    return Text("\n".join(terminal_safe(line, keep="") for line in lines), style=style)


def fan_out_label(node: Node) -> str | None:
    """`matrix ×4`, `for_each scenarios ≤16`, or None for a single-task stage."""
    if node.matrix is not None:
        label = f"matrix ×{len(node.matrix)}"
    elif node.for_each is not None:
        label = f"for_each {node.for_each}"
    else:
        return None
    return label + (f" ≤{node.max_concurrency}" if node.max_concurrency else "")


def _lines(node: Node, state: str | None) -> list[str]:
    lines = [node.id, node.type]
    if fan := fan_out_label(node):
        lines.append(fan)
    if state:
        lines.append(f"({state})")
    return lines


def _edges(graph: RunGraph) -> list[tuple[str, str, bool]]:
    """(need, stage, on the critical path) for every dependency, in topological order."""
    path = graph.critical_path
    critical = set(itertools.pairwise(path))
    return [(need, node.id, (need, node.id) in critical) for node in graph.nodes for need in node.needs]


# -- Mermaid -------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    """Text for inside a quoted Mermaid label: entity codes for what Mermaid or HTML would read."""
    out = []
    for ch in text:
        if ch.isalnum() or ch in " _-.:/,×≤()+=*@":
            out.append(ch)
        else:
            out.append(f"#{ord(ch)};")
    return "".join(out)


def to_mermaid(graph: RunGraph, states: Mapping[str, str] | None = None, direction: str = "LR") -> str:
    """A Mermaid flowchart of `graph`; `states` colours nodes by stage state."""
    names = {node.id: f"s{i}" for i, node in enumerate(graph.nodes)}
    states = states or {}
    out = [f"%% {_mermaid_text(graph.name)} {_mermaid_text(graph.version)}", f"flowchart {direction}"]
    for node in graph.nodes:
        label = "<br/>".join(_mermaid_text(line) for line in _lines(node, states.get(node.id)))
        # a fanned-out stage is drawn as a "subroutine" box: [[...]]
        opening, closing = ("[[", "]]") if node.fans_out else ("[", "]")
        out.append(f'    {names[node.id]}{opening}"{label}"{closing}')
    links: list[int] = []
    for number, (need, stage, critical) in enumerate(_edges(graph)):
        out.append(f"    {names[need]} {'==>' if critical else '-->'} {names[stage]}")
        if critical:
            links.append(number)
    used = sorted({states[n.id] for n in graph.nodes if states.get(n.id) in STATE_COLOURS})
    for state in used:
        out.append(f"    classDef {state} fill:{STATE_COLOURS[state]},color:#000")
    for state in used:
        members = ",".join(names[n.id] for n in graph.nodes if states.get(n.id) == state)
        out.append(f"    class {members} {state}")
    critical_nodes = [names[n.id] for n in graph.nodes if n.on_critical_path]
    if critical_nodes:
        # a style line, not a class: a node has one class for its state and keeps this border too
        for name in critical_nodes:
            out.append(f"    style {name} stroke:{CRITICAL_COLOUR},stroke-width:3px")
    if links:
        out.append(f"    linkStyle {','.join(map(str, links))} stroke:{CRITICAL_COLOUR},stroke-width:3px")
    return "\n".join(out) + "\n"


# -- DOT -----------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """A double-quoted DOT string holding `text` literally."""
    text = terminal_safe(text, keep="\n\r")  # other controls: visible escapes, then escaped as text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def to_dot(graph: RunGraph, states: Mapping[str, str] | None = None, direction: str = "LR") -> str:
    """A Graphviz digraph of `graph`; `states` fills nodes by stage state."""
    names = {node.id: f"s{i}" for i, node in enumerate(graph.nodes)}
    states = states or {}
    out = [
        f"digraph {_dot_string(graph.name)} {{",
        f"    label={_dot_string(f'{graph.name} {graph.version}')};",
        f"    rankdir={direction};",
        '    node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    for node in graph.nodes:
        state = states.get(node.id)
        attrs = [f"label={_dot_string(chr(10).join(_lines(node, state)))}", f"tooltip={_dot_string(node.id)}"]
        if node.fans_out:
            attrs.append("peripheries=2")  # a stack of tasks
        if state in STATE_COLOURS:
            attrs.append(f'fillcolor="{STATE_COLOURS[state]}"')
        if node.on_critical_path:
            attrs.append(f'color="{CRITICAL_COLOUR}", penwidth=3')
        out.append(f"    {names[node.id]} [{', '.join(attrs)}];")
    for need, stage, critical in _edges(graph):
        style = f' [color="{CRITICAL_COLOUR}", penwidth=3]' if critical else ""
        out.append(f"    {names[need]} -> {names[stage]}{style};")
    out.append("}")
    return "\n".join(out) + "\n"


# -- SVG -----------------------------------------------------------------------------------

SVG_NODE_W, SVG_NODE_H, SVG_COL_GAP, SVG_ROW_GAP, SVG_PAD = 190, 54, 70, 18, 16


def _xml(text: object) -> str:
    """Text for SVG content or a double-quoted attribute: markup characters as entities, controls
    as visible escapes."""
    escaped = terminal_safe(text, keep="")
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def svg_layout(graph: RunGraph) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Top-left corner of each node (columns by level, rows in topological order), and the size."""
    columns: dict[int, list[str]] = {}
    for node in graph.nodes:
        columns.setdefault(node.level, []).append(node.id)
    tallest = max((len(ids) for ids in columns.values()), default=1)
    height = float(tallest * SVG_NODE_H + (tallest - 1) * SVG_ROW_GAP)
    where: dict[str, tuple[float, float]] = {}
    for level, ids in columns.items():
        offset = (height - (len(ids) * SVG_NODE_H + (len(ids) - 1) * SVG_ROW_GAP)) / 2
        for row, sid in enumerate(ids):
            where[sid] = (
                SVG_PAD + level * (SVG_NODE_W + SVG_COL_GAP),
                SVG_PAD + offset + row * (SVG_NODE_H + SVG_ROW_GAP),
            )
    levels = max(columns, default=0) + 1
    width = float(2 * SVG_PAD + levels * SVG_NODE_W + (levels - 1) * SVG_COL_GAP)
    return where, width, 2 * SVG_PAD + height + 24


def to_svg(graph: RunGraph, states: Mapping[str, str] | None = None) -> str:
    """A standalone SVG picture of `graph` (no Graphviz needed); `states` fills nodes by stage state
    and writes the state under the type. The critical path is drawn thick."""
    states = states or {}
    where, width, height = svg_layout(graph)
    opening = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="12">'
    )
    arrow = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8a94a0"/></marker></defs>'
    )
    out = [
        opening,
        f"<title>{_xml(graph.name)} {_xml(graph.version)}</title>",
        arrow,
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    for need, stage, critical in _edges(graph):
        (x1, y1), (x2, y2) = where[need], where[stage]
        a, b = (x1 + SVG_NODE_W, y1 + SVG_NODE_H / 2), (x2 - 2, y2 + SVG_NODE_H / 2)
        middle = (a[0] + b[0]) / 2
        colour, width_px = (CRITICAL_COLOUR, 2.5) if critical else ("#8a94a0", 1.3)
        out.append(
            f'<path d="M {a[0]:.1f} {a[1]:.1f} C {middle:.1f} {a[1]:.1f}, {middle:.1f} {b[1]:.1f}, '
            f'{b[0]:.1f} {b[1]:.1f}" fill="none" stroke="{colour}" stroke-width="{width_px}" '
            'marker-end="url(#arrow)"/>'
        )
    for node in graph.nodes:
        x, y = where[node.id]
        state = states.get(node.id)
        fill = STATE_COLOURS.get(state or "", "#ffffff")
        stroke = f'stroke="{CRITICAL_COLOUR}" stroke-width="3"' if node.on_critical_path else 'stroke="#555"'
        lines = _lines(node, state)
        out.append(f'<g data-stage="{_xml(node.id)}" data-state="{_xml(state or "")}">')
        out.append(f"<title>{_xml(node.id)}</title>")
        if node.fans_out:  # a stack of tasks
            out.append(
                f'<rect x="{x + 4:.1f}" y="{y + 4:.1f}" width="{SVG_NODE_W}" height="{SVG_NODE_H}" rx="8" '
                f'fill="{fill}" stroke="#999"/>'
            )
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{SVG_NODE_W}" height="{SVG_NODE_H}" rx="8" fill="{fill}" {stroke}/>'
        )
        for number, text in enumerate(lines[:3]):
            weight = ' font-weight="bold"' if number == 0 else ""
            shown = text if len(text) <= 28 else text[:27] + "…"
            out.append(f'<text x="{x + 10:.1f}" y="{y + 17 + number * 14:.1f}"{weight}>{_xml(shown)}</text>')
        out.append("</g>")
    used = [s for s in STATE_COLOURS if s in set(states.values())]
    for number, state in enumerate(used):
        lx = SVG_PAD + number * 110
        out.append(
            f'<rect x="{lx}" y="{height - 20:.0f}" width="12" height="12" fill="{STATE_COLOURS[state]}" stroke="#555"/>'
            f'<text x="{lx + 16}" y="{height - 10:.0f}">{_xml(state)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
