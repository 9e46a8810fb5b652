from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestration.embedded import RedisServer
from tests.integration.conftest import Cluster

FAST_LEASES = {"CHORDFLOW_LEASE_S": "3", "CHORDFLOW_HEARTBEAT_S": "0.5", "CHORDFLOW_MAX_DELIVERIES": "3"}


@pytest.fixture
def chaos_cluster(tmp_path) -> Iterator[Cluster]:
    """A fresh Redis per test; workers with 3 s leases so crashes are noticed in seconds."""
    with RedisServer() as server:
        c = Cluster(server, tmp_path)
        try:
            yield c
        finally:
            c.stop()
