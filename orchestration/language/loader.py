"""Reading a pipeline file: safe YAML/JSON parsing that keeps line numbers.

A pipeline file comes from users and sometimes from places nobody checked, so reading it must
fail fast and clearly on hostile input instead of hanging, eating memory or crashing:

1. size and encoding are checked on the raw bytes, and at most MAX_FILE_BYTES are ever read;
2. the data is built in one iterative pass over libyaml's event stream (`yaml_reader.Reader`),
   which refuses foreign tags, nesting past MAX_DEPTH and aliases expanding past MAX_NODES as
   they arrive.

JSON is YAML, so `.json` files take the same path. Unquoted values are typed by YAML 1.2's
core schema (`scalars`), which matches JSON, rather than PyYAML's YAML 1.1; `--set` values
(parse_override) are typed the same way.

The parsed data then has its `${...}` variables resolved by `interpolation.interpolate`.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestration.errors import InvalidPipeline, Problem
from orchestration.language.document import Document, located_problem
from orchestration.language.interpolation import interpolate
from orchestration.language.limits import Limits
from orchestration.language.scalars import plain, too_many_digits
from orchestration.language.yaml_reader import Reader

MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 1_000_000  # after alias expansion

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a variable's name, for --set


def load_document(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Document:
    """Read, parse and interpolate the pipeline file at `path`; raise InvalidPipeline on any problem."""
    source = str(path)
    try:
        size = os.stat(path).st_size
        if size <= MAX_FILE_BYTES:
            with open(path, "rb") as file:
                raw = file.read(MAX_FILE_BYTES + 1)  # a device or a growing file may not stop at its size
            size = len(raw)
    except OSError as exc:
        raise InvalidPipeline(
            [Problem(f"cannot read {source}: {exc.strerror or exc}", source=source)]
        ) from None
    if size > MAX_FILE_BYTES:
        raise InvalidPipeline([Problem(f"{source} is {size:,} bytes; the limit is 10 MiB", source=source)])
    with gc_paused():
        return load_text(raw, source, overrides, env, limits)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cycle collector while building a large tree of fresh objects.

    A 10,000-stage file makes hundreds of thousands of containers, none of them garbage;
    the collector would walk them again and again (about a fifth of the load time).
    The size limits above bound what is built meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_text(
    text: str | bytes,
    source: str = "<string>",
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> Document:
    """Parse and interpolate pipeline `text` (YAML or JSON); raise InvalidPipeline on any problem.

    Strings in the top-level `variables` may use `${NAME}` and `${NAME:-default}` to read `env`
    (os.environ by default) - the environment only, not other variables. `overrides` (`--set`,
    see parse_override) then replace or add variables, as given. Every other string may use
    `${name}`: a variable, else the environment, else the default; a stage's `when` and
    `condition` are expressions and are left alone. `$${` is a literal `${`.
    """
    if isinstance(text, str):
        # Lone surrogates (from a lenient decode upstream) are then reported like bad bytes.
        text = text[: MAX_FILE_BYTES + 1].encode("utf-8", "surrogatepass")
    if len(text) > MAX_FILE_BYTES:
        raise InvalidPipeline([Problem(f"{source} is over the limit of 10 MiB", source=source)])
    try:
        reader = Reader(source, limits or Limits(), MAX_DEPTH, MAX_NODES)
        document = reader.read(_decode(text, source))
        env = os.environ if env is None else env
        walk = reader.references or reader.aliased
        data, problems = interpolate(document, overrides or {}, env, walk=walk, limit=MAX_FILE_BYTES)
        if problems:
            raise InvalidPipeline([located_problem(document.data, source, *p) for p in problems])
        return Document(data, document.lines, source)
    except (RecursionError, MemoryError):  # a last line of defence; the limits should prevent both
        raise InvalidPipeline(
            [Problem("the file is too large or too deeply nested to read", source=source)]
        ) from None


def parse_override(item: str) -> tuple[str, Any]:
    """`NAME=VALUE` from `--set`, VALUE read as a YAML scalar: `30` -> 30, `true` -> True, `a b` -> 'a b'."""
    name, equals, value = item.partition("=")
    name = name.strip()
    if not equals or not _NAME.fullmatch(name):
        message = (
            f"--set {item!r} must be NAME=VALUE, NAME being letters, digits and _ (not starting with a digit)"
        )
        raise InvalidPipeline([Problem(message, source="--set")])
    try:
        return name, plain(value) if value else ""
    except ValueError:  # a decimal integer of thousands of digits
        raise InvalidPipeline(
            [Problem(f"--set {name}: {too_many_digits(value, Limits())}", source="--set")]
        ) from None


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = (
            f"{source} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start:,} (line {line}) "
            "can't be decoded; save the file as UTF-8"
        )
        raise InvalidPipeline([Problem(message, line=line, source=source)]) from None
