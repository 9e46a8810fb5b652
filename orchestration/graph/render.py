"""A run graph as a picture: Mermaid flowchart or Graphviz DOT text (`chordflow graph`).

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

from rich.text import Text

from orchestration.graph.resolve import Node, RunGraph

STATE_COLOURS: dict[str, str] = {
    "pending": "#eeeeee",
    "queued": "#cfe2ff",
    "running": "#9ec5fe",
    "retrying": "#ffe69c",
    "succeeded": "#a3cfbb",
    "failed": "#f1aeb5",
    "skipped": "#e2e3e5",
    "cancelled": "#c4c8cb",
    "upstream_failed": "#f8d7da",
    "fallback": "#fecba1",
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
