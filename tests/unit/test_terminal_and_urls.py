"""Issue 10, failures 7 (webhook payloads and logs), 8 (terminal injection) and 9 (Redis URLs).

What a pipeline file or a stage wrote reaches the terminal as text, never as rich markup or a
control sequence; a webhook payload carries no traceback unless asked, no log line shows a
webhook's credentials, and only http(s) is ever opened; a malformed CHORDFLOW_REDIS_URL is
exit 2 saying what is wrong, and an unreachable Redis `cannot reach Redis at ...`, exit 1.
"""

from __future__ import annotations

import http.server
import json
import logging
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from orchestration.api import Client
from orchestration.cli import _common as cli_module
from orchestration.cli.main import cli
from orchestration.engine import hooks, redis_url
from orchestration.engine.hook_sender import HookSender
from orchestration.engine.keys import Keys
from orchestration.engine.store import connect
from orchestration.errors import RunNotFound
from orchestration.fleet.embedded import RedisServer, free_port
from orchestration.graph import render
from orchestration.graph.resolve import resolve
from orchestration.language.options import Webhook
from orchestration.language.validation import load_pipeline
from orchestration.settings import Settings

HOSTILE = "[red]x[/red]\x1b[2J"  # rich markup, then "clear the screen"
SHOWN = "[red]x[/red]\\x1b[2J"  # what must be printed instead: the literal text
PASSWORD = "s3cr3t-pw"


# -- terminal output ---------------------------------------------------------------------------


def test_terminal_safe_writes_controls_as_visible_escapes():
    assert render.terminal_safe("a\x1b[2Jb\x07c\x9b1m\x7f") == "a\\x1b[2Jb\\x07c\\x9b1m\\x7f"
    assert render.terminal_safe("line one\n\tline two") == "line one\n\tline two"
    assert render.terminal_safe("é ● 日本") == "é ● 日本"
    text = render.term(HOSTILE)
    assert text.plain == SHOWN and not text.spans


def test_say_prints_markup_and_escape_sequences_as_text(capsys):
    cli_module.say(f"error: {HOSTILE}\x9b31m")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out
    assert f"error: {SHOWN}\\x9b31m" in out


def test_json_output_escapes_c1_controls(capsys):
    cli_module.print_json({"name": "a\x9b2Jb\x1b"})
    out = capsys.readouterr().out
    assert "\x9b" not in out and "\x1b" not in out
    assert json.loads(out) == {"name": "a\x9b2Jb\x1b"}  # still the same JSON


def test_dot_graph_writes_no_control_character(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("name: p\nstages:\n  - {id: a, uses: noop}\n", encoding="utf-8")
    settings = Settings()
    graph = resolve(load_pipeline(file, {}, settings=settings), settings)
    graph = graph.model_copy(update={"name": HOSTILE})  # a stored graph is not re-validated
    dot = render.to_dot(graph)
    assert "\x1b" not in dot and "\\\\x1b[2J" in dot
    assert "\x1b" not in render.to_mermaid(graph)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


@pytest.fixture
def hostile_run(server, tmp_path) -> Iterator[str]:
    """A run whose record, stage details, events and logs hold markup and escape sequences (as a
    hostile file or stage would leave them), cancelled so `watch` reads it to its end."""
    settings = Settings(redis_url=server.url)
    file = tmp_path / "p.yaml"
    file.write_text(
        textwrap.dedent("""\
        name: plain
        stages:
          - {id: a, uses: shell, run: [echo, hi]}
    """),
        encoding="utf-8",
    )
    client = Client(settings)
    run_id = client.submit(load_pipeline(file, {}, settings=settings), check_types=False).run_id
    store, keys = client.store, Keys(settings.key_prefix)
    raw = redis.Redis.from_url(server.url, decode_responses=True)  # to forge what a stage could write
    raw.hset(keys.run(run_id), "pipeline", HOSTILE)
    raw.hset(
        keys.stage(run_id, "a"),
        mapping={
            "host": f"host{HOSTILE}",
            "attempt": "1",
            "error": json.dumps({"type": "Boom", "message": f"[bold]boom[/bold]{HOSTILE}"}),
        },
    )
    store.logs.append_logs(run_id, "a", [f"out {HOSTILE} \x9b31mred\x1b]0;title\x07", "second\tline"])
    raw.xadd(
        keys.events(run_id),
        {"t": f"{time.time():.3f}", "kind": "stage", "stage": "a", "state": HOSTILE, "host": "h\x1b[1A"},
    )
    raw.close()
    assert client.cancel(run_id) == "cancelled"
    yield run_id


@pytest.fixture
def wide(monkeypatch):
    """Wide consoles: a long cell is not folded across lines (the assertions read whole strings)."""
    for console in (cli_module.console, cli_module.errors):
        monkeypatch.setattr(console, "_width", 400)


@pytest.mark.parametrize(
    "args", [["runs"], ["status", "{run}"], ["logs", "{run}"], ["logs", "{run}", "a"], ["watch", "{run}"]]
)
def test_commands_print_user_text_literally(server, hostile_run, wide, args):
    argv = [arg.format(run=hostile_run) for arg in args]
    result = CliRunner().invoke(cli, argv, env={"CHORDFLOW_REDIS_URL": server.url})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    out = result.output
    assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, repr(out)
    if args[0] in ("runs", "status", "watch"):
        assert SHOWN in out, out  # the markup is printed, not read
    if args[0] == "status":
        assert "[bold]boom[/bold]" in out and f"host{SHOWN}" in out
    if args[0] == "logs":
        assert f"out {SHOWN} \\x9b31mred\\x1b]0;title\\x07" in out
        assert "\nsecond" in out and "line\n" in out  # line ends are kept (rich expands the tab)
    if args[0] == "watch":
        assert f"a {SHOWN} on h\\x1b[1A" in out  # the event line


# -- Redis URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis//x", "no scheme"),
        ("http://x", "scheme is http://"),
        ("redis://host:notaport", "port 'notaport'"),
        ("redis://host:70000/0", "port '70000'"),
        ("redis://host/abc", "database 'abc'"),
        ("redis://", "no host"),
        ("", "empty"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, why):
    with pytest.raises(redis_url.InvalidRedisUrl, match=why) as caught:
        redis_url.check(url)
    assert caught.value.exit_code == 2


def test_well_formed_urls_pass_and_are_shown_without_password():
    for url in (
        "redis://localhost",
        "redis://:pw@h:6380/2",
        "rediss://u:pw@h/0",
        "unix:///tmp/r.sock",
        "redis://[::1]:6379/0",
    ):
        assert redis_url.check(url) == url
    assert redis_url.shown(f"redis://:{PASSWORD}@db.example:6380/2") == "redis://***@db.example:6380/2"
    assert redis_url.shown("redis://db.example") == "redis://db.example:6379/0"
    with pytest.raises(redis_url.InvalidRedisUrl) as caught:
        redis_url.check(f"redis://:{PASSWORD}@h:notaport/0")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("url", ["redis//x", "http://x", "redis://host:notaport"])
@pytest.mark.parametrize("args", [["status", "r1"], ["runs"], ["health"], ["plan", "{quickstart}"]])
def test_a_malformed_url_is_exit_2(url, args):
    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    argv = [arg.format(quickstart=quickstart) for arg in args]
    result = CliRunner().invoke(cli, argv, env={"CHORDFLOW_REDIS_URL": url})
    assert result.exit_code == 2, result.output
    assert "is not a Redis URL" in result.output and "unexpected" not in result.output


def test_an_unreachable_redis_is_exit_1_within_the_limit_with_the_password_masked():
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/3"
    for args in (
        ["status", "r1"],
        ["cancel", "r1"],
        ["runs"],
        ["logs", "r1"],
        ["stages"],
        ["schedule", "list"],
    ):
        started = time.monotonic()
        result = CliRunner().invoke(cli, args, env={"CHORDFLOW_REDIS_URL": url})
        assert time.monotonic() - started < 5, args
        assert result.exit_code == 1, (args, result.output)
        assert "error: cannot reach Redis at redis://***@127.0.0.1:" in result.output, result.output
        assert "/3 (" in result.output
        assert PASSWORD not in result.output and "unexpected" not in result.output


def test_a_silent_redis_fails_within_redis_timeout_s():
    """A port that accepts connections and never answers: the client gives up after the limit."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        started = time.monotonic()
        result = CliRunner().invoke(
            cli, ["status", "r1"], env={"CHORDFLOW_REDIS_URL": url, "CHORDFLOW_REDIS_TIMEOUT_S": "1"}
        )
        took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "cannot reach Redis at" in result.output
    assert took < 3, took


def test_workers_keep_their_patient_client(server):
    """Outside a command, connect() still builds the reconnecting client workers need."""
    settings = Settings(redis_url=server.url)
    patient = connect(settings)
    assert patient.get_retry()._retries == 20
    with redis_url.fail_fast():
        quick = connect(settings)
    assert quick.get_retry()._retries == 0
    assert quick.connection_pool.connection_kwargs["socket_timeout"] == settings.redis_timeout_s


# -- webhooks ---------------------------------------------------------------------------------


EVENT = {
    "kind": "stage_error",
    "run_id": "r1",
    "stage_id": "a",
    "error": {"type": "Boom", "message": "no", "traceback": "Traceback (most recent call last): ..."},
}


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_payloads_leave_tracebacks_out_unless_included(receiver):
    url, received = receiver
    hooks.post(Webhook(url=url, events=("*",)), EVENT, total_s=2)
    hooks.post(Webhook(url=url, events=("*",), include=("traceback",)), EVENT, total_s=2)
    assert "traceback" not in received[0]["error"] and received[0]["error"]["message"] == "no"
    assert received[1]["error"]["traceback"].startswith("Traceback")


def test_only_http_and_https_are_ever_opened(tmp_path, caplog):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    hook = Webhook.model_construct(url=f"file://{secret}", events=("*",), timeout=1.0, headers={}, include=())
    with caplog.at_level(logging.ERROR, logger="chordflow.hooks"), pytest.raises(hooks.WebhookRefused):
        hooks.post(hook, EVENT, total_s=1)
    assert "refused" in caplog.text and "only http:// and https://" in caplog.text


class _Graph:
    def __init__(self, webhooks: list[Webhook]):
        self.webhooks = webhooks


class _Runs:
    def __init__(self, webhooks: list[Webhook] | None):
        self._webhooks = webhooks

    def graph(self, run_id: str) -> _Graph:
        if self._webhooks is None:
            raise RunNotFound(run_id)
        return _Graph(self._webhooks)


class _Store:
    """Just enough of a RunStore for the sender's webhooks: `runs.graph`."""

    def __init__(self, webhooks: list[Webhook] | None):
        self.runs = _Runs(webhooks)


def _sender(webhooks: list[Webhook] | None) -> HookSender:
    settings = Settings(hook_timeout_s=2, webhook_total_s=0.5)
    return HookSender(settings, "test", store=_Store(webhooks))  # type: ignore[arg-type]


def test_the_sender_refuses_other_schemes_with_a_logged_error(caplog, monkeypatch):
    opened: list[str] = []
    monkeypatch.setattr(hooks, "post", lambda hook, payload, total: opened.append(hook.url))
    hook = Webhook.model_construct(
        url=f"ftp://user:{PASSWORD}@files.example/x", events=("*",), timeout=1.0, headers={}, include=()
    )
    with caplog.at_level(logging.ERROR, logger="chordflow.hooks"):
        _sender([hook]).deliver(dict(EVENT))
    assert opened == []
    assert "refused" in caplog.text and "ftp://***@files.example/x" in caplog.text
    assert PASSWORD not in caplog.text


def test_no_log_line_shows_credentials(caplog):
    """A webhook that fails, and a Python hook whose exception names a URL: masked, tracebacks too."""
    closed = free_port()

    @hooks.on_stage_error
    def leaky(event: dict[str, Any]) -> None:
        raise RuntimeError(f"could not post to https://bot:{PASSWORD}@chat.example/hook")

    hook = Webhook(url=f"http://user:{PASSWORD}@127.0.0.1:{closed}/hook", events=("*",), timeout=0.5)
    try:
        with caplog.at_level(logging.DEBUG, logger="chordflow.hooks"):
            _sender([hook]).deliver(dict(EVENT))
    finally:
        hooks._HOOKS["stage_error"].remove(leaky)
    assert "raised; ignored" in caplog.text and "failed after retries" in caplog.text
    assert "Traceback" in caplog.text  # the traceback is still logged, masked
    assert PASSWORD not in caplog.text, caplog.text
    assert "https://***@chat.example/hook" in caplog.text


def test_mask_hides_a_password_holding_an_at_sign():
    assert hooks.mask("see https://u:p@ss@host/x") == "see https://***@host/x"
    assert hooks.mask("http://host/a@b") == "http://host/a@b"
