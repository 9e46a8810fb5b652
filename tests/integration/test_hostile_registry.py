"""Registry writes are atomic (issue 20, point 3): the cycle check and the write are one
transaction, so concurrent `pipelines add` cannot together close a cycle that each alone would
have been refused for. Real redis-server; 50 registrations race from 50 threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orchestration.engine.dependencies import registry
from orchestration.engine.store import RunStore, connect
from orchestration.errors import InvalidPipeline
from orchestration.fleet.embedded import RedisServer
from orchestration.fleet.registry import cycles, register
from orchestration.language.spec import PipelineSpec
from orchestration.language.validation import validate_data
from orchestration.settings import Settings

RACERS = 50


@pytest.fixture
def store() -> Iterator[RunStore]:
    with RedisServer() as server:
        settings = Settings(redis_url=server.url)
        yield RunStore(connect(settings), settings)


def spec(name: str, triggered_by: list[str]) -> PipelineSpec:
    return validate_data(
        {
            "name": name,
            "triggers": [{"on_success_of": up} for up in triggered_by],
            "stages": [{"id": "only", "uses": "noop"}],
        }
    )


def race(store: RunStore, specs: list[PipelineSpec]) -> tuple[list[str], list[str]]:
    """Register every spec at once, one thread each; (names registered, names refused)."""
    start = threading.Barrier(len(specs))
    added: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def one(s: PipelineSpec) -> None:
        start.wait()
        try:
            register(store, s)
            added.append(s.name)
        except InvalidPipeline:
            refused.append(s.name)
        except BaseException as exc:  # noqa: BLE001 - anything else fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return added, refused


def assert_consistent(store: RunStore, added: list[str]) -> None:
    """The registry holds exactly what was added, has no cycle, and its trigger index matches it."""
    known = registry(store)
    assert sorted(known) == sorted(added)
    assert cycles({n: r.spec for n, r in known.items()}) == []
    for name, entry in known.items():
        for t in entry.spec.triggers:
            assert name in store.records.triggered_by(t.on_success_of)
    indexed = {
        n
        for r in known.values()
        for t in r.spec.triggers
        for n in store.records.triggered_by(t.on_success_of)
    }
    assert indexed <= set(known)


def test_fifty_pipelines_each_triggered_by_all_others_leave_exactly_one(store):
    # Given 50 pipelines, each triggered by every other: any two of them make a cycle
    names = [f"clique-{i}" for i in range(RACERS)]
    specs = [spec(n, [m for m in names if m != n]) for n in names]

    # When all 50 are registered at once
    added, refused = race(store, specs)

    # Then exactly one is registered and the 49 others were refused, naming the cycle
    assert len(added) == 1, added
    assert len(refused) == RACERS - 1
    assert_consistent(store, added)


def test_a_ring_of_fifty_registered_at_once_leaves_forty_nine(store):
    # Given a ring: ring-i is triggered by ring-(i+1); the 50th registration closes the loop
    names = [f"ring-{i}" for i in range(RACERS)]
    specs = [spec(n, [names[(i + 1) % RACERS]]) for i, n in enumerate(names)]

    # When all 50 are registered at once
    added, refused = race(store, specs)

    # Then one (whichever came last) was refused and the registry has no cycle
    assert len(refused) == 1, refused
    assert len(added) == RACERS - 1
    assert_consistent(store, added)
