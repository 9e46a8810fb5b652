"""`chordflow dashboard`: the run page (one run's DAG, timeline, items, logs) and the fleet page
(runs, pipelines, schedules, workers, health), served by the standard library.

    server = serve(settings, port=0, token="...")   # started in a daemon thread
    url = f"http://127.0.0.1:{server.server_address[1]}/#run=<run id>"
    server.shutdown(); server.server_close()

Routes:
    GET  /                              the run page (dashboard.html: inline CSS and JS, no external
                                        assets; the graph code shared with the fleet page is put in
                                        from dashboard_graph.html)
    GET  /fleet                         the fleet page (fleet.html), which reads /api/fleet/*:
    GET  /api/fleet/runs                ?status=A,B &pipeline=P &since=&until= (epoch s) &limit=&offset=
    GET  /api/fleet/pipelines           registered pipelines (and those with runs), links, last runs
    GET  /api/fleet/pipelines/<name>/graph   its stages, with their states in its newest run
    GET  /api/fleet/schedules           each schedule and its next tick, from its cron or interval
    GET  /api/fleet/workers             live workers: queues, capacity, heartbeat age
    GET  /api/fleet/health              what `chordflow health --json` says
    GET  /api/runs                      newest first; ?limit=N (1-500, default 50) and ?pipeline=NAME
    GET  /api/runs/<id>                 the run (runview.run_view: each stage's attempts) plus the graph
                                        (nodes, edges, levels), the timeline (every attempt, on its
                                        host), where the run came from (`origin`), and for a run of a
                                        chain the chain's runs
    GET  /api/runs/<id>/items?stage=S   a fan-out stage's items: state, host, attempts
    GET  /api/runs/<id>/logs?stage=S[&item=I][&attempt=N][&after=ID]
                                        the attempts of S that logged, and the lines of one after ID
    GET  /api/session                   whether actions are on, and the CSRF token to send with them
    POST /api/runs/<id>/<action>        cancel, pause, resume, retry

The page polls the JSON endpoints every second with fetch() and draws the DAG and the timeline
as inline SVG. Every piece of run data is put in the page as text (textContent, setAttribute),
never as markup: stage ids, errors, log lines and outputs are user data.

Actions need the token the dashboard was started with (`--token`, or `dashboard_token` in the
settings); without one the page is read-only and every POST is refused. A POST must carry the
token (`X-Chordflow-Token`), the CSRF token of this server (`X-CSRF-Token`, from /api/session,
which another site's page cannot read) and a JSON content type, and come from this page's own
origin (`Origin`, `Sec-Fetch-Site`): a page elsewhere cannot make a browser act for it. The
server itself bounds what a slow or malformed client can hold (dashboard_http.py).
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import traceback
from functools import cached_property
from http import HTTPStatus
from http.server import ThreadingHTTPServer
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
from orchestration.cli.dashboard_data import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    item_list,
    log_view,
    run_detail,
    run_list,
)
from orchestration.cli.dashboard_fleet import (
    health_view,
    pipeline_graph,
    pipelines_view,
    run_page,
    schedules_view,
    workers_view,
)
from orchestration.cli.dashboard_http import BadRequest, BoundedServer, JsonHandler, body_length, page_csp
from orchestration.engine import redis_url
from orchestration.engine.attempts import AttemptHistory
from orchestration.engine.store import connect
from orchestration.errors import ChordflowError, InvalidId, RunNotFound
from orchestration.settings import Settings
from orchestration.states import RunStatus, State

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
ACTIONS = ("cancel", "pause", "resume", "retry")
HISTORIES = 32  # runs whose attempt history the server keeps, read incrementally


# -- HTTP -------------------------------------------------------------------------------------


PAGES = {"/": "dashboard.html", "/index.html": "dashboard.html", "/fleet": "fleet.html"}
DONE = (RunStatus.CANCELLED, RunStatus.PAUSED, "resumed", State.RETRYING)  # what an action that acted says


INCLUDE = re.compile(rb"<!-- include ([a-z_]+\.html) -->")


def _page(name: str) -> bytes:
    """A page, with the shared parts it includes (`<!-- include dashboard_graph.html -->`) in place."""
    folder = resources.files("orchestration.cli")
    return INCLUDE.sub(
        lambda m: folder.joinpath(m[1].decode()).read_bytes(), folder.joinpath(name).read_bytes()
    )


class DashboardServer(BoundedServer):
    """One shared Client (thread-safe: a Redis connection pool) for every request thread; the
    action token (None: read-only), this server's CSRF token, and the runs' attempt histories."""

    def __init__(self, address: tuple[str, int], client: Client, token: str | None = None):
        self.client = client
        self.redis = connect(client.settings)  # the run indexes' time ranges (the fleet page's filters)
        self.token = token or None
        self.csrf = secrets.token_urlsafe(24)
        self.histories: dict[str, AttemptHistory] = {}
        self.history_lock = threading.Lock()
        files = {name: _page(name) for name in set(PAGES.values())}
        self.pages = {path: (files[name], page_csp(files[name])) for path, name in PAGES.items()}
        super().__init__(address, DashboardHandler)

    @cached_property
    def loopback(self) -> bool:
        return self.server_address[0] in LOOPBACK_NAMES

    def history(self, run_id: str) -> AttemptHistory:
        """The run's attempt history as last read (call with `history_lock` held): the next read
        takes only the events that are new since."""
        history = self.histories.pop(run_id, None) or AttemptHistory()
        if len(self.histories) >= HISTORIES:
            self.histories.pop(next(iter(self.histories)))
        self.histories[run_id] = history  # the most recent last
        return history


class DashboardHandler(JsonHandler):
    server: DashboardServer

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._json({"error": "this dashboard only answers to localhost"}, HTTPStatus.FORBIDDEN)
            return
        url = urlsplit(self.path)
        try:
            if url.path in self.server.pages:
                page, csp = self.server.pages[url.path]
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8", csp)
            elif url.path.startswith("/api/fleet/"):
                self._fleet_get(url.path[len("/api/fleet/") :], parse_qs(url.query))
            elif url.path == "/api/runs":
                self._json(self._runs(parse_qs(url.query)))
            elif url.path == "/api/session":
                self._json({"actions": self.server.token is not None, "csrf": self.server.csrf})
            elif url.path.startswith("/api/runs/") and len(url.path) > len("/api/runs/"):
                self._run_get(unquote(url.path[len("/api/runs/") :]), parse_qs(url.query))
            else:
                self._json({"error": f"no such page: {url.path}"}, HTTPStatus.NOT_FOUND)
        except KeyError as exc:
            self._json({"error": f"no stage {exc} in this run"}, HTTPStatus.NOT_FOUND)
        except RunNotFound as exc:
            self._json({"error": f"no run {exc} in this Redis (it may have expired)"}, HTTPStatus.NOT_FOUND)
        except (BadRequest, InvalidId) as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
        except redis.RedisError as exc:
            self._json({"error": f"cannot read Redis: {exc}"}, HTTPStatus.SERVICE_UNAVAILABLE)
        except ChordflowError as exc:
            self._json({"error": str(exc)}, HTTPStatus.INTERNAL_SERVER_ERROR)
        except (ConnectionError, TimeoutError):
            raise  # the client went away: nothing to answer
        except Exception as exc:  # noqa: BLE001 - logged with its traceback; the page says what failed
            self.log_error("%s failed: %s", url.path, traceback.format_exc())
            self._json({"error": f"internal error: {type(exc).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _fleet_get(self, what: str, query: dict[str, list[str]]) -> None:
        """The fleet page's sections: runs, pipelines (and one's graph), schedules, workers, health."""
        server, store, settings = self.server, self.server.client.store, self.server.client.settings
        if what == "runs":
            self._json(run_page(server.redis, store, query))
        elif what == "pipelines":
            self._json(pipelines_view(store, settings))
        elif what.startswith("pipelines/") and what.endswith("/graph") and len(what) > 16:
            self._json(pipeline_graph(store, settings, unquote(what[len("pipelines/") : -len("/graph")])))
        elif what == "schedules":
            self._json(schedules_view(store, settings))
        elif what == "workers":
            self._json(workers_view(store, settings))
        elif what == "health":
            self._json(health_view(settings))
        else:
            self._json({"error": f"no such page: /api/fleet/{what}"}, HTTPStatus.NOT_FOUND)

    def _run_get(self, rest: str, query: dict[str, list[str]]) -> None:
        run_id, _, sub = rest.partition("/")
        stage = query.get("stage", [""])[0]
        if not sub:
            with self.server.history_lock:
                self._json(run_detail(self.server.client, run_id, self.server.history(run_id)))
        elif sub == "items" and stage:
            with self.server.history_lock:
                self._json(item_list(self.server.client, run_id, stage, self.server.history(run_id)))
        elif sub == "logs" and stage:
            after = query.get("after", [""])[0]
            log = log_view(
                self.server.client,
                run_id,
                stage,
                _whole(query, "item"),
                _whole(query, "attempt"),
                after if re.fullmatch(r"\d+-\d+", after) else None,
            )
            self._json(log)
        else:
            self._json({"error": f"no such page: /api/runs/{rest}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        """An action on a run, if the token, the CSRF token and the origin say it is this page's."""
        try:  # read the body first, whatever the answer: a bad length is refused before any read
            length = body_length(self.headers.get("Content-Length"))
        except BadRequest as exc:
            self.close_connection = True
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            return
        try:
            received = self.rfile.read(length)  # it says nothing the path does not
        except TimeoutError:
            received = b""
        if len(received) < length or not self.server.read_done(self.request):
            self.close_connection = True
            return  # the client went quiet or the deadline cut it: no answer
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if not self._host_allowed():
            self._json({"error": "this dashboard only answers to localhost"}, HTTPStatus.FORBIDDEN)
            return
        if len(parts) != 4 or parts[:2] != ["api", "runs"] or parts[3] not in ACTIONS:
            self._json({"error": f"no such action: {url.path}"}, HTTPStatus.NOT_FOUND)
            return
        refused = self._refusal()
        if refused:
            self._json({"error": refused}, HTTPStatus.FORBIDDEN)
            return
        run_id, action = unquote(parts[2]), parts[3]
        try:
            outcome = getattr(self.server.client, action)(run_id)
        except RunNotFound as exc:
            self._json({"error": f"no run {exc} in this Redis (it may have expired)"}, HTTPStatus.NOT_FOUND)
            return
        except InvalidId as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            return
        except redis.RedisError as exc:
            self._json({"error": f"cannot reach Redis: {exc}"}, HTTPStatus.SERVICE_UNAVAILABLE)
            return
        ok = outcome in DONE
        self.log_message("%s %s: %s", action, run_id, outcome)
        body = {"run_id": run_id, "action": action, "ok": ok, "outcome": outcome}
        self._json(body, HTTPStatus.OK if ok else HTTPStatus.CONFLICT)

    def _refusal(self) -> str | None:
        """Why this POST may not act (None: it may)."""
        if self.server.token is None:
            return "this dashboard is read-only: start it with --token (or set dashboard_token) to act"
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return "an action is a POST of application/json"
        host = (self.headers.get("Host") or "").strip().lower()
        origin = (self.headers.get("Origin") or "").strip().lower()
        if origin and urlsplit(origin).netloc != host:
            return "an action must come from this dashboard's own page"
        if (self.headers.get("Sec-Fetch-Site") or "same-origin") not in ("same-origin", "none"):
            return "an action must come from this dashboard's own page"
        if not hmac.compare_digest(self.headers.get("X-CSRF-Token") or "", self.server.csrf):
            return "missing or stale CSRF token: reload the page"
        if not hmac.compare_digest(
            (self.headers.get("X-Chordflow-Token") or "").encode(), self.server.token.encode()
        ):
            return "wrong or missing token"
        return None

    def _runs(self, query: dict[str, list[str]]) -> dict[str, Any]:
        raw = query.get("limit", [str(DEFAULT_LIMIT)])[0]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not 1 <= int(raw) <= MAX_LIMIT:
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


def _whole(query: dict[str, list[str]], name: str) -> int | None:
    raw = query.get(name, [""])[0]
    if raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}")
    return int(raw)


def make_server(
    settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None
) -> DashboardServer:
    """Bind (port 0 picks a free one) without serving yet; raises OSError if the port is taken.
    `token` (else `settings.dashboard_token`) turns the actions on."""
    if not settings.redis_url:
        raise ValueError("no Redis URL configured (set CHORDFLOW_REDIS_URL)")
    return DashboardServer((host, port), Client(settings), token or settings.dashboard_token)


def serve(
    settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None
) -> ThreadingHTTPServer:
    """Start the dashboard in a daemon thread and return its server (stop: shutdown(), server_close())."""
    server = make_server(settings, host, port, token)
    threading.Thread(target=server.serve_forever, name="chordflow-dashboard", daemon=True).start()
    return server


@click.command("dashboard")
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on (loopback by default). The page has no login: anyone who can reach "
    "it sees every run's stages, errors, logs and outputs.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--token",
    envvar="CHORDFLOW_DASHBOARD_TOKEN",
    help="Turn on the page's cancel, pause, resume and retry buttons; they must send this token "
    "(default: the dashboard_token setting). Without one the page is read-only.",
)
def dashboard_command(host: str, port: int, token: str | None) -> None:
    """Serve a web page of recent runs and each run's DAG, timeline, items and live logs, refreshed
    every second (with a token, its buttons cancel, pause, resume and retry runs), and a fleet page
    (/fleet) of runs by status, pipeline and time, pipelines and their links, schedules, workers
    and health."""
    settings = settings_from_env()
    if not settings.redis_url:
        say("error: set CHORDFLOW_REDIS_URL to the Redis your runs live in", err=True)
        raise click.exceptions.Exit(EXIT_INVALID)
    _check_redis(settings)
    try:
        server = make_server(settings, host, port, token)
    except OSError as exc:
        say(f"error: cannot listen on {host}:{port}: {exc.strerror or exc} (pick another --port)", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from None
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    mode = "actions need the token" if server.token else "read-only: --token turns the actions on"
    say(f"Chordflow dashboard on http://{shown}:{bound_port}/ ({mode}; Ctrl-C to stop)")
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
