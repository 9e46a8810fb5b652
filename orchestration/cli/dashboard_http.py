"""The dashboard's HTTP server: a threaded server that a hostile client cannot exhaust, and the
content security policy of its pages.

A thread serves each connection, so three limits keep a slow or malformed client from holding
threads: at most `MAX_CONNECTIONS` connections are served at once (more are answered 503 at
once); every read from a client waits at most `IDLE_TIMEOUT_S`; and a request must have sent its
headers and body within `REQUEST_DEADLINE_S` of connecting (a slowloris that trickles one byte
before each idle timeout is cut off there). A `Content-Length` that is not a whole number up to
`MAX_BODY` bytes is refused with 400 before anything is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 64  # connections served at once; a page polls with a handful
IDLE_TIMEOUT_S = 10.0  # one read from a client (headers or body)
REQUEST_DEADLINE_S = 15.0  # from connecting to the end of the request's body
MAX_BODY = 4096  # bytes: an action's body is `{}`
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"  # a JSON answer runs nothing
BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Retry-After: 5\r\n\r\ntoo many connections to the dashboard; try again shortly\n"
)


class BadRequest(ValueError):
    """A request the dashboard cannot use (answered with 400)."""


def body_length(raw: str | None) -> int:
    """The body's length from a `Content-Length` header (0 when absent); BadRequest when it is not
    a whole number from 0 to MAX_BODY (a negative one would read until the client closes)."""
    if raw is None:
        return 0
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise BadRequest(f"Content-Length must be a whole number of bytes, not {raw[:40]!r}")
    if len(text) > 9 or int(text) > MAX_BODY:
        raise BadRequest(f"Content-Length {text[:20]} is more than the {MAX_BODY} bytes an action takes")
    return int(text)


def page_csp(page: bytes) -> str:
    """A policy that allows exactly the page's own inline <style> and <script> (by hash) and
    fetch() to this server: nothing else runs, even if some text slipped in as markup."""
    text = page.decode("utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections served at once and a deadline for reading
    each request (a watchdog thread shuts the socket of a request still unread at its deadline:
    the blocked read then ends and the thread is free)."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: connections waiting to be accepted
    max_connections = MAX_CONNECTIONS
    request_deadline_s = REQUEST_DEADLINE_S

    def __init__(self, address: tuple[str, int], handler: Any):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._reading: dict[socket.socket, float] = {}  # connection -> deadline of its request
        self._cut: set[socket.socket] = set()  # connections shut at their deadline: never answered
        self._reading_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, handler)
        threading.Thread(target=self._watch, name="dashboard-deadlines", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._reading_lock:
            self._reading[request] = time.monotonic() + self.request_deadline_s
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.forget(request)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.forget(request)
            self._slots.release()

    def read_done(self, request: Any) -> bool:
        """The request is read (headers and body): the deadline no longer applies. False when the
        deadline cut the connection first (then it gets no answer)."""
        with self._reading_lock:
            self._reading.pop(request, None)
            return request not in self._cut

    def forget(self, request: Any) -> None:
        with self._reading_lock:
            self._reading.pop(request, None)
            self._cut.discard(request)

    def _watch(self) -> None:
        while not self._closed.wait(0.5):
            now = time.monotonic()
            with self._reading_lock:
                late = [s for s, deadline in self._reading.items() if deadline < now]
                for s in late:
                    del self._reading[s]
            for s in late:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # the handler's read returns at once
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away (or was cut at its deadline) is no error of the server's
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler of a BoundedServer: idle reads time out, the request's deadline ends
    when it is read, and answers carry the headers every dashboard answer has."""

    server: BoundedServer
    server_version = "chordflow-dashboard"
    timeout = IDLE_TIMEOUT_S  # each read from the client

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed and self.command != "POST" and not self.server.read_done(self.request):
            self.close_connection = True  # cut at its deadline: the rest of it never came
            return False
        return parsed  # a GET has no body: it is read; a POST is once its body is

    def _json(self, data: dict[str, Any], code: HTTPStatus = HTTPStatus.OK) -> None:
        if code == HTTPStatus.OK:
            data = {**data, "server_time": time.time()}
        body = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        self._send(code, body, "application/json; charset=utf-8")

    def _send(self, code: HTTPStatus, body: bytes, content_type: str, csp: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", csp or JSON_CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # the pages poll every second: log only what went wrong
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)
