"""Whatever arguments reach a stage task, its entry logs and refuses what it cannot run, and no
exception but the task's expected `AttemptFailed` (FAILURE in Flower, the message acknowledged)
escapes into Celery (a property test: hypothesis feeds random JSON bodies).

The task's own function is called here, in this process, with a real redis-server behind the
worker's store: arguments that parse (random run ids) reach the store and are refused as an
unknown run. The consumer's guard, which drops a malformed message before Celery builds its
request, is tested with real worker processes in test_redis_faults.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestration.fleet.embedded import RedisServer
from orchestration.settings import Settings
from workers.app import create_app
from workers.outcome import AttemptFailed

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
# argument lists shaped like a stage message, so that many of them parse and reach the store
LIKELY = st.tuples(
    st.sampled_from(["r1", "rx0", "r:bad", "", "r1\n"]) | st.text(max_size=8),
    st.sampled_from(["a", "stage-1", "../x"]) | st.text(max_size=8),
    st.integers(-2, 3) | JSON,
    st.none() | st.integers(-2, 5) | JSON,
).map(list)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Iterator:
    with RedisServer() as server:
        app = create_app(Settings(redis_url=server.url), hostname="entry-test")
        yield app.tasks["stage.noop"]
        app.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.lists(JSON, max_size=7) | LIKELY, kwargs=st.dictionaries(st.text(max_size=6), JSON, max_size=2)
)
def test_any_arguments_are_refused_with_a_log_line_never_raised(task, caplog, args, kwargs):
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="chordflow.worker"):
        try:
            outcome = task.run(*args, **kwargs)
        except AttemptFailed as exc:  # the task's FAILURE in Flower: expected (`throws`), acknowledged
            outcome = str(exc)
    assert outcome.startswith("refused: ")
    assert any(r.getMessage().startswith("refusing ") for r in caplog.records)
