"""Stage types: the only code a pipeline can make a worker run.

`@stage` records a function as a stage type in this process's registry under
its name and under `module:function`, so `uses:` may name either. Workers
import the modules they are told to at start (and the `chordflow.stages`
entry points) and serve exactly the types registered then. A pipeline file
names types; it can never make a worker import anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from orchestration.language.options import RetryPolicy

ENTRY_POINT_GROUP = "chordflow.stages"
BUILTIN_TYPES = ("shell", "noop", "sleep", "fail")


@dataclass(frozen=True)
class StageType:
    name: str
    func: Callable[..., Any]
    retry: RetryPolicy | None = None
    queue: str | None = None
    version: str = "1"
    description: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.func.__module__}:{self.func.__qualname__}"

    @property
    def task_name(self) -> str:
        return task_name(self.name)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ref": self.qualified,
            "version": self.version,
            "queue": self.queue,
            "retry": self.retry.model_dump(mode="json", exclude_unset=True) if self.retry else None,
        }


def task_name(type_name: str) -> str:
    """The Celery task name of a stage type, as Flower shows it."""
    return f"stage.{type_name}"


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, StageType] = {}
        self._aliases: dict[str, str] = {}

    def add(self, stage_type: StageType) -> StageType:
        existing = self._types.get(stage_type.name)
        if existing is not None and existing.func is not stage_type.func:
            raise ValueError(
                f"stage type '{stage_type.name}' is registered twice "
                f"({existing.qualified} and {stage_type.qualified})"
            )
        self._types[stage_type.name] = stage_type
        self._aliases[stage_type.qualified] = stage_type.name
        return stage_type

    def get(self, name: str) -> StageType | None:
        return self._types.get(self._aliases.get(name, name))

    def canonical(self, name: str) -> str | None:
        found = self.get(name)
        return found.name if found else None

    def names(self) -> list[str]:
        """Every name `uses:` may give: type names and their module:function references."""
        return sorted(set(self._types) | set(self._aliases))

    def __iter__(self) -> Iterator[StageType]:
        return iter(list(self._types.values()))

    def __len__(self) -> int:
        return len(self._types)


REGISTRY = Registry()


def stage(
    name: str | None = None,
    *,
    retry: RetryPolicy | None = None,
    queue: str | None = None,
    version: str = "1",
    registry: Registry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a stage type: `@stage(name="market.fetch", retry=RetryPolicy(...))`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        (registry or REGISTRY).add(
            StageType(
                name or func.__name__,
                func,
                retry,
                queue,
                str(version),
                (func.__doc__ or "").strip().split("\n")[0],
            )
        )
        return func

    return decorate


def entry_point_names() -> list[str]:
    """Stage type names declared by installed packages, read without importing them."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
