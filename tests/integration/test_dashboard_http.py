"""A hostile client cannot hold the dashboard's threads: a bad Content-Length is refused at once,
slow requests are cut off at their deadline, and connections past the cap are answered 503."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from orchestration.cli.dashboard import serve
from orchestration.cli.dashboard_http import MAX_CONNECTIONS

from .conftest import wait_until


@pytest.fixture
def server(bare_cluster):
    server = serve(bare_cluster.settings, port=0)  # no token: read-only, as an attacker finds it
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


@pytest.mark.parametrize("length", ["-1", "abc", "99999999999999999999", "5000", "1e3", "0x10"])
def test_a_bad_content_length_is_refused_with_400_without_reading(server, length):
    port = server.server_address[1]
    started = time.monotonic()
    reply = request(
        port,
        f"POST /api/runs/r-x/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.0 400"), reply[:200]
    assert b"Content-Length" in reply
    assert time.monotonic() - started < 2.0  # answered at once, not after a read timeout


def test_a_slowloris_holds_no_more_than_the_cap_and_is_cut_off_at_the_deadline(server):
    port = server.server_address[1]
    server.request_deadline_s = 3.0  # 15 s in service; short here so the test is quick
    before = handler_threads()
    attackers = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 else b"POST /api/runs/r-x/retry HTTP/1.1\r\n"
        )
        attackers.append(s)
    wait_until(lambda: handler_threads() - before >= MAX_CONNECTIONS, timeout=10)
    # While under attack: the threads stay at the cap, and those past it were told so at once
    time.sleep(0.5)
    assert handler_threads() - before <= MAX_CONNECTIONS
    busy = sum(1 for s in attackers if _reply_now(s).startswith(b"HTTP/1.0 503"))
    assert busy >= 200 - MAX_CONNECTIONS - 5
    # a trickle of one byte a second does not keep a connection past its deadline
    for _ in range(5):
        for s in attackers:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        time.sleep(1.0)
    # Then the deadline has closed every held connection and freed its thread
    wait_until(lambda: handler_threads() - before <= 0, timeout=10)
    for s in attackers:  # closed by the server: nothing more to read
        s.settimeout(2)
        try:
            assert s.recv(1024) == b""
        except ConnectionResetError:
            pass
        s.close()
    # and the page answers again
    assert request(port, b"GET /api/session HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").startswith(b"HTTP/1.0 200")


def _reply_now(s: socket.socket) -> bytes:
    s.settimeout(0.05)
    try:
        return s.recv(1024)
    except (TimeoutError, OSError):
        return b""
    finally:
        s.settimeout(10)
