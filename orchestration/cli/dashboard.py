"""`chordflow dashboard`: a read-only web page of runs and one run's DAG, served by the standard library.

    server = serve(settings, port=0)          # started in a daemon thread
    url = f"http://127.0.0.1:{server.server_address[1]}/#run=<run id>"
    server.shutdown(); server.server_close()

Routes (GET only):
    /                  the page (dashboard.html: inline CSS and JS, no external assets)
    /api/runs          newest first; ?limit=N (1-500, default 50) and ?pipeline=NAME
    /api/runs/<id>     Client.status() plus the graph: nodes (level, needs), edges, levels

The page polls the JSON endpoints every second with fetch() and draws the DAG as
inline SVG. Every piece of run data is put in the page as text (textContent,
setAttribute), never as markup: stage ids, errors and outputs are user data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from functools import cached_property
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click
import redis

from orchestration.api import Client
from orchestration.cli._common import (
    EXIT_FAILED,
    EXIT_INVALID,
    UNREACHABLE,
    report_error,
    say,
    settings_from_env,
    unreachable,
)
from orchestration.engine import redis_url
from orchestration.engine.store import connect
from orchestration.errors import ChordflowError, InvalidId, RunNotFound
from orchestration.settings import Settings

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
PREVIEW_CHARS = 400  # outputs and context can be up to the output cap each; the page shows a preview
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
RUN_NUMBERS = ("created_at", "started_at", "finished_at", "total", "remaining")


# -- data -------------------------------------------------------------------------------------


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def run_list(client: Client, limit: int = DEFAULT_LIMIT, pipeline: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` runs (of `pipeline`, if given) as small records; times in epoch seconds."""
    runs = []
    for record in client.runs(limit, pipeline):
        row: dict[str, Any] = {
            key: record.get(key) for key in ("run_id", "pipeline", "version", "status", "failed_stage")
        }
        row.update({key: _number(record.get(key)) for key in RUN_NUMBERS})
        runs.append(row)
    return runs


def run_detail(client: Client, run_id: str) -> dict[str, Any]:
    """`Client.status(run_id)` with the DAG: nodes in topological order, edges and levels.

    Outputs and the context are cut to a preview: the page polls this every second."""
    status = client.status(run_id)
    graph = client.store.graph(run_id)
    for stage in status["stages"].values():
        stage["output"] = _preview(stage.get("output"))
    status["context"] = _preview(status.get("context") or None)
    status["nodes"] = [
        {
            "id": n.id,
            "level": n.level,
            "needs": list(n.needs),
            "type": n.type,
            "queue": n.queue,
            "critical": n.critical,
            "on_critical_path": n.on_critical_path,
            "fans_out": n.fans_out,
        }
        for n in graph.nodes
    ]
    status["edges"] = [{"from": need, "to": n.id} for n in graph.nodes for need in n.needs]
    status["levels"] = {n.id: n.level for n in graph.nodes}
    return status


# -- HTTP -------------------------------------------------------------------------------------


def _page() -> bytes:
    return resources.files("orchestration.cli").joinpath("dashboard.html").read_bytes()


def _csp(page: bytes) -> str:
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


class BadRequest(ValueError):
    """A query parameter the dashboard cannot use (answered with 400)."""


class DashboardServer(ThreadingHTTPServer):
    """One shared Client (thread-safe: a Redis connection pool) for every request thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], client: Client):
        self.client = client
        self.page = _page()
        self.csp = _csp(self.page)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DashboardHandler)

    @cached_property
    def loopback(self) -> bool:
        return self.server_address[0] in LOOPBACK_NAMES


class DashboardHandler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "chordflow-dashboard"

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._json({"error": "this dashboard only answers to localhost"}, HTTPStatus.FORBIDDEN)
            return
        url = urlsplit(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
            elif url.path == "/api/runs":
                self._json(self._runs(parse_qs(url.query)))
            elif url.path.startswith("/api/runs/") and len(url.path) > len("/api/runs/"):
                self._json(run_detail(self.server.client, unquote(url.path[len("/api/runs/") :])))
            else:
                self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)
        except RunNotFound as exc:
            self._json({"error": f"no run {exc} in this Redis (it may have expired)"}, HTTPStatus.NOT_FOUND)
        except (BadRequest, InvalidId) as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
        except redis.RedisError as exc:
            self._json({"error": f"cannot read Redis: {exc}"}, HTTPStatus.SERVICE_UNAVAILABLE)

    def _runs(self, query: dict[str, list[str]]) -> dict[str, Any]:
        raw = query.get("limit", [str(DEFAULT_LIMIT)])[0]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw!r}")
        pipeline = query.get("pipeline", [""])[0].strip() or None
        return {"runs": run_list(self.server.client, int(raw), pipeline)}

    def _host_allowed(self) -> bool:
        """On a loopback address, refuse other Host names: a web page elsewhere cannot read runs
        through DNS rebinding. Bound to another address, the operator chose who may connect."""
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in LOOPBACK_NAMES

    def _json(self, data: dict[str, Any], code: HTTPStatus = HTTPStatus.OK) -> None:
        if code == HTTPStatus.OK:
            data = {**data, "server_time": time.time()}
        body = json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        self._send(code, body, "application/json; charset=utf-8")

    def _send(self, code: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", self.server.csp)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # the page polls every second: log only what went wrong
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)


def make_server(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> DashboardServer:
    """Bind (port 0 picks a free one) without serving yet; raises OSError if the port is taken."""
    if not settings.redis_url:
        raise ValueError("no Redis URL configured (set CHORDFLOW_REDIS_URL)")
    return DashboardServer((host, port), Client(settings))


def serve(settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """Start the dashboard in a daemon thread and return its server (stop: shutdown(), server_close())."""
    server = make_server(settings, host, port)
    threading.Thread(target=server.serve_forever, name="chordflow-dashboard", daemon=True).start()
    return server


@click.command("dashboard")
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. The page is read-only and has no login: anyone who can reach "
    "it sees every run's stages, errors and outputs.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
def dashboard_command(host: str, port: int) -> None:
    """Serve a web page of recent runs and each run's DAG, refreshed every second."""
    settings = settings_from_env()
    if not settings.redis_url:
        say("error: set CHORDFLOW_REDIS_URL to the Redis your runs live in", err=True)
        raise click.exceptions.Exit(EXIT_INVALID)
    _check_redis(settings)
    try:
        server = make_server(settings, host, port)
    except OSError as exc:
        say(f"error: cannot listen on {host}:{port}: {exc.strerror or exc} (pick another --port)", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    say(f"Chordflow dashboard on http://{shown}:{bound_port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _check_redis(settings: Settings) -> None:
    """Answer for the Redis before serving: a malformed URL exits 2 and a Redis that cannot be
    reached exits 1 within `redis_timeout_s`, as every other command does."""
    try:
        with redis_url.fail_fast():
            connect(settings).ping()
    except ChordflowError as exc:
        raise click.exceptions.Exit(report_error(exc)) from None
    except UNREACHABLE as exc:
        raise click.exceptions.Exit(report_error(unreachable(exc, [settings.redis_url or ""]))) from None


COMMANDS = (dashboard_command,)
