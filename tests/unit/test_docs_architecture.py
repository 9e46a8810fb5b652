"""docs/architecture.md against the code it describes, read at test time, so the page cannot drift:

- every module under orchestration/ and workers/ (each .py and .lua file) has one line in the
  "Modules" tables, and every module named there exists;
- every method of `Keys` is a row of the "Redis keys" tables, and the key written there is the
  one the method builds;
- every error class of both packages is a row of the "Errors" table, with its base, its module
  and its command-line exit code (`exit_code`, which `cli/_common.report_error` returns);
- every Lua script is a row of "Who calls the scripts", with the Python modules that load it
  (found by its file name given to a call: `source("begin.lua")`, `Script(client, "begin.lua")`),
  the method that runs it, what builds its arguments and decodes its reply, and who calls it.

A failure names what to add or remove on the page.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from orchestration.engine.keys import Keys
from orchestration.errors import ChordflowError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("orchestration", "workers")
LUA = ROOT / "orchestration" / "engine" / "lua"

# Modules the page describes ahead of the branch that writes them: allowed to be missing until they
# land, and then taken out of this set (a test fails on one that exists).
ANNOUNCED: set[str] = set()
# the calls that load a script by its file name: scripts.source, scripts.Script, Traversable.joinpath
LOADERS = {"source", "Script", "joinpath"}

CODE = re.compile(r"`([^`]+)`")


# -- reading the page --------------------------------------------------------------------------


def section(title: str, level: int = 2) -> str:
    """The text under the heading `title` (of `level` #s), up to the next heading of that level or higher."""
    text = DOC.read_text(encoding="utf-8")
    marks = "#" * level
    pattern = rf"^{marks} {re.escape(title)}\n(.*?)(?=^#{{1,{level}}} |\Z)"
    match = re.search(pattern, text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/architecture.md has no '{marks} {title}' section"
    return match.group(1)


def rows(text: str) -> list[list[str]]:
    """The cells of every table row of `text` whose first cell is code (`...`): header and rule
    rows are left out."""
    found = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]  # `\|` is a pipe inside a cell
        found.append([cell.strip() for cell in cells])
    return found


def code(cell: str) -> list[str]:
    """The code spans of a cell, in order."""
    return CODE.findall(cell)


# -- the modules ------------------------------------------------------------------------------


def source_modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts
    }


def module_rows() -> list[list[str]]:
    return rows(section("Modules"))


def test_every_module_has_one_line_in_the_modules_tables():
    named = [code(row[0])[0] for row in module_rows()]
    missing = sorted(source_modules() - set(named))
    assert not missing, (
        "add a row `| `path` | what it owns |` to the Modules tables of docs/architecture.md for: "
        + ", ".join(missing)
    )
    twice = sorted({name for name in named if named.count(name) > 1})
    assert not twice, f"named twice in the Modules tables: {twice}"


def test_every_module_the_page_names_exists():
    named = {code(row[0])[0] for row in module_rows()}
    gone = sorted(named - source_modules() - ANNOUNCED)
    assert not gone, f"the Modules tables of docs/architecture.md name modules that do not exist: {gone}"


def test_each_module_line_says_what_it_owns():
    empty = [row[0] for row in module_rows() if len(row) < 2 or len(row[1]) < 10]
    assert not empty, f"rows of the Modules tables without a line of what the module owns: {empty}"


def test_announced_modules_are_described_and_not_yet_there():
    named = {code(row[0])[0] for row in module_rows()}
    assert ANNOUNCED <= named, f"announced but not described: {sorted(ANNOUNCED - named)}"
    landed = sorted(ANNOUNCED & source_modules())
    assert not landed, (
        f"these modules exist now: remove them from ANNOUNCED in {Path(__file__).name}: {landed}"
    )


# -- the Redis keys ---------------------------------------------------------------------------


def key_methods() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(Keys, name))
        for name, value in vars(Keys).items()
        if not name.startswith("_") and callable(getattr(Keys, name))
    }


def key_rows() -> dict[str, tuple[list[str], str]]:
    """method name -> (argument names as the page writes them, the key cell)."""
    found: dict[str, tuple[list[str], str]] = {}
    for row in rows(section("Redis keys")):
        match = re.fullmatch(r"(\w+)\(([^)]*)\)", code(row[0])[0])
        assert match, f"a key table row whose first cell is not `method(args)`: {row[0]}"
        name, args = match.groups()
        assert name not in found, f"Keys.{name} has two rows in the key tables"
        found[name] = ([a.strip() for a in args.split(",") if a.strip()], row[1] if len(row) > 1 else "")
    return found


def test_every_keys_method_is_in_the_key_tables():
    missing = sorted(set(key_methods()) - set(key_rows()))
    assert not missing, f"add rows to the Redis keys tables of docs/architecture.md for Keys.{missing}"
    unknown = sorted(set(key_rows()) - set(key_methods()))
    assert not unknown, f"the key tables name methods Keys does not have: {unknown}"


def test_each_key_row_shows_the_key_its_method_builds():
    keys = Keys("<p>")
    methods = key_methods()
    for name, (args, cell) in key_rows().items():
        wanted = [p for p in methods[name].parameters if p != "self"]
        assert len(args) == len(wanted), f"`{name}({', '.join(args)})`: Keys.{name} takes {wanted}"
        shown = code(cell)
        if not shown or not shown[0].startswith("<"):  # no key of its own: a pattern, a list of keys
            continue
        built = getattr(keys, name)(*[f"<{a}>" for a in args])
        assert shown[0] == built, f"the key tables show {shown[0]!r} for Keys.{name}; it builds {built!r}"


def test_run_keys_lists_the_keys_of_the_one_run_table():
    """What `run_keys` returns (the keys that get the run's TTL) is the "One run" table, but the
    rows its own row names as left out."""
    table = {code(row[0])[0].partition("(")[0]: code(row[1]) for row in rows(section("One run", level=3))}
    left_out = set(table.pop("run_keys"))
    shown = {key[0] for name, key in table.items() if key and name not in left_out}
    listed = set(Keys("<p>").run_keys("<run>", ["<stage>"]))
    assert listed == shown, (
        f"run_keys lists {sorted(listed - shown)} that the One run table does not show (or leaves out), "
        f"and not {sorted(shown - listed)}"
    )


# -- the errors -------------------------------------------------------------------------------


def python_modules() -> list[str]:
    names = []
    for path in sorted(source_modules()):
        if not path.endswith(".py") or path.endswith("__main__.py"):  # __main__ runs the command
            continue
        names.append(path[: -len(".py")].removesuffix("/__init__").replace("/", "."))
    return names


def error_classes() -> dict[str, type[BaseException]]:
    """Every public exception (and warning) class defined in the two packages, by name."""
    found: dict[str, type[BaseException]] = {}
    for name in python_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")  # private: caught in its own module
            ):
                assert attr not in found, (
                    f"two error classes named {attr}: {name} and {found[attr].__module__}"
                )
                found[attr] = value
    return found


def exit_code(cls: type[BaseException]) -> str:
    """What the table says for a class: the command line's exit code, or — for an error that is no
    ChordflowError (never a command's error: caught where it is raised)."""
    return str(cls.exit_code) if issubclass(cls, ChordflowError) else "—"


def error_rows() -> dict[str, list[str]]:
    found = {}
    for row in rows(section("Errors")):
        name = code(row[0])[0]
        assert name not in found, f"{name} has two rows in the error table"
        found[name] = row
    return found


def test_every_error_class_is_in_the_error_table():
    classes, table = error_classes(), error_rows()
    missing = sorted(set(classes) - set(table))
    assert not missing, f"add rows to the error table of docs/architecture.md for: {missing}"
    unknown = sorted(set(table) - set(classes))
    assert not unknown, f"the error table names classes the code does not define: {unknown}"


def test_the_error_table_has_each_class_base_module_and_exit_code():
    for name, cls in error_classes().items():
        row = error_rows()[name]
        assert len(row) >= 5, (
            f"the error row of {name} needs: class | derives from | defined in | exit code | what"
        )
        bases = [b.__name__ for b in cls.__bases__]
        assert code(row[1]) == bases, f"{name} derives from {bases}; the error table says {row[1]}"
        path = cls.__module__.replace(".", "/") + ".py"
        if not (ROOT / path).exists():
            path = cls.__module__.replace(".", "/") + "/__init__.py"
        assert code(row[2]) == [path], f"{name} is defined in {path}; the error table says {row[2]}"
        assert row[3] == exit_code(cls), (
            f"{name}'s exit code is {exit_code(cls)}; the error table says {row[3]}"
        )


def test_the_command_line_exits_with_the_classes_exit_code():
    """The table's exit codes are the command line's: `report_error` returns the error's `exit_code`."""
    from orchestration.cli._common import report_error

    for name, cls in error_classes().items():
        if issubclass(cls, ChordflowError):
            # a subclass that takes a plain message, whatever the class's own __init__ wants
            plain = type(
                name, (cls,), {"__init__": lambda self: Exception.__init__(self, "raised by a test")}
            )
            assert report_error(plain()) == int(exit_code(cls)), name


# -- who calls the scripts ----------------------------------------------------------------------


def _called(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def script_loaders() -> dict[str, set[str]]:
    """script file name -> the modules that give it, by name, to a loading call (LOADERS)."""
    found: dict[str, set[str]] = {path.name: set() for path in LUA.glob("*.lua")}
    for path in sorted(source_modules()):
        if not path.endswith(".py"):
            continue
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _called(node.func) not in LOADERS:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and arg.value.endswith(".lua")
                ):
                    found.setdefault(arg.value, set()).add(path)
    return found


def script_rows() -> dict[str, list[str]]:
    found = {}
    for row in rows(section("Who calls the scripts", level=3)):
        name = code(row[0])[0]
        assert name not in found, f"{name} has two rows in 'Who calls the scripts'"
        assert len(row) >= 5, (
            f"the row of {name} needs: script | loaded by | run through | arguments and reply | called from"
        )
        found[name] = row
    return found


def test_every_script_is_in_who_calls_the_scripts():
    scripts, table = {p.name for p in LUA.glob("*.lua")}, script_rows()
    missing = sorted(scripts - set(table))
    assert not missing, f"add rows to 'Who calls the scripts' in docs/architecture.md for: {missing}"
    unknown = sorted(set(table) - scripts)
    assert not unknown, f"'Who calls the scripts' names scripts that do not exist: {unknown}"


def test_each_script_row_names_the_modules_that_load_it():
    loaders = script_loaders()
    for name, row in script_rows().items():
        said = set(code(row[1]))
        assert said == loaders[name], (
            f"{name} is loaded (its file name given to a call) by {sorted(loaders[name])}; "
            f"'Who calls the scripts' says {sorted(said)}"
        )


def test_each_script_row_names_what_runs_it_and_who_calls_that():
    for name, row in script_rows().items():
        runners = code(row[2])
        assert runners, f"'Who calls the scripts': no function or method named for {name}"
        methods = []
        for runner in runners:
            owners = [importlib.import_module(m[: -len(".py")].replace("/", ".")) for m in code(row[1])]
            target = None
            for owner in owners:
                target = owner
                for part in runner.split("."):
                    target = getattr(target, part, None)
                if target is not None:
                    break
            assert target is not None, f"{name} is run through `{runner}`, which none of {code(row[1])} has"
            methods.append(runner.rpartition(".")[2])
        for caller in [c for c in code(row[4]) if c.endswith(".py")]:  # the modules; the rest is prose
            path = ROOT / caller
            assert path.is_file(), (
                f"'Who calls the scripts' names {caller} as a caller of {name}: no such file"
            )
            text = path.read_text(encoding="utf-8")
            assert any(re.search(rf"\.{m}\(", text) for m in methods), (
                f"{caller} is said to call {runners} (for {name}), but calls none of them"
            )


def test_each_script_row_names_what_builds_its_arguments_and_decodes_its_reply():
    """`commit.finish_call`, `replies.decode_finish`: `module.name` spans are functions (or classes)
    of `orchestration.engine` modules; other spans of the cell (a class, a method) are prose."""
    for name, row in script_rows().items():
        for ref in [r for r in code(row[3]) if re.fullmatch(r"[a-z_]+\.\w+", r)]:
            module, _, function = ref.rpartition(".")
            assert callable(
                getattr(importlib.import_module(f"orchestration.engine.{module}"), function, None)
            ), (
                f"'Who calls the scripts' names `{ref}` for {name}: orchestration.engine.{module} has no {function}"
            )


@pytest.mark.parametrize("package", ["orchestration", "workers"])
def test_sub_package_docstrings_are_written(package):
    """Each package's __init__ says what it owns and what it may import (no `TODO`)."""
    for path in sorted((ROOT / package).rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        where = path.relative_to(ROOT).as_posix()
        assert doc and "TODO" not in doc, f"{where}: write its docstring (what it owns, what it may import)"
        assert "import" in doc, f"{where}: its docstring says what the package may import"


# -- docs/commit-path.md: Redis Cluster ---------------------------------------------------------


def test_commit_path_says_cluster_is_unsupported_while_a_scripts_keys_span_slots():
    """The page says Cluster is not supported because one script's keys hash to different slots
    (Cluster refuses such a script with CROSSSLOT). While that holds, the page must say so; when
    the keys share one slot (hash tags), this fails: then revisit the page."""
    from redis.crc import key_slot

    page = (ROOT / "docs" / "commit-path.md").read_text(encoding="utf-8")
    keys = Keys()
    # what every finish.lua call passes besides the run's own keys
    slots = {key_slot(key.encode()) for key in (keys.run("r1"), keys.leases(), keys.outbox(), keys.hooks())}
    assert len(slots) > 1
    assert "## Redis Cluster is not supported" in page
    assert "ready for Redis Cluster" not in page
