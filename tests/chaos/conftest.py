from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from orchestration.fleet.embedded import RedisServer
from tests.integration.conftest import Cluster

from .netns import FAST_LEASES, HostNetwork, hosts_fixture

__all__ = ["FAST_LEASES"]


@pytest.fixture
def chaos_cluster(tmp_path) -> Iterator[Cluster]:
    """A fresh Redis per test; workers with 3 s leases so crashes are noticed in seconds."""
    with RedisServer() as server:
        c = Cluster(server, tmp_path)
        try:
            yield c
        finally:
            c.stop()


@pytest.fixture
def hosts(tmp_path, request) -> Iterator[HostNetwork]:
    """Three hosts, each a network namespace on a veth link to a bridge where Redis (AOF on) listens.

    No workers yet: `hosts.start_workers()`. Everything is removed afterwards, pass or fail.
    """
    yield from hosts_fixture(tmp_path, tag=re.sub(r"[^\w.-]", "_", request.node.name)[:60])
