"""A whole run over Redis with a password, and over TLS (rediss://) with a password."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestration.api import Client
from orchestration.engine.store import connect
from orchestration.fleet.embedded import RedisServer
from orchestration.settings import Settings

from .conftest import Cluster, pipeline


def _certificates(folder: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (
        str(folder / n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for argv in (
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "1",
            "-subj",
            "/CN=chordflow-test-ca",
        ],
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "1",
            "-extfile",
            str(ext),
        ],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    return cert, key, ca


def _run_through(server: RedisServer, tmp_path: Path, env: dict[str, str], settings: Settings) -> None:
    cluster = Cluster(server, tmp_path)
    cluster.settings = settings
    cluster.client = Client(settings)
    cluster.redis = connect(settings)  # a client of its own, with the password (and TLS)
    try:
        cluster.start_worker(hostname="secure", env=env)
        result = cluster.run(
            pipeline(
                "secure",
                {"id": "a", "uses": "noop", "params": {"output": 1}},
                {"id": "b", "uses": "test.record", "needs": ["a"]},
            )
        )
        assert result.status == "succeeded"
        assert result.outputs["a"] == 1
    finally:
        cluster.stop()


def test_a_run_over_redis_with_a_password(tmp_path):
    with RedisServer(password="p@ss word/1") as server:
        assert ":p%40ss%20word%2F1@" in server.url  # a password with characters a URL must encode
        _run_through(server, tmp_path, {}, Settings(redis_url=server.url))


def test_a_run_over_tls_with_a_password(tmp_path):
    try:
        cert, key, ca = _certificates(tmp_path)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl is not available to make test certificates: {exc}")
    server = RedisServer(password="s3cret", tls=(cert, key, ca))
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS support")
    try:
        assert server.url.startswith("rediss://")
        _run_through(
            server, tmp_path, {"CHORDFLOW_SSL_CA_CERTS": ca}, Settings(redis_url=server.url, ssl_ca_certs=ca)
        )
    finally:
        server.stop()
