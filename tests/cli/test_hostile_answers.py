"""The CLI against something hostile answering at the node's admin URL (a process squatting the
port of a stopped node, or a node relaying a hostile peer's text).

What it answers is printed on the operator's terminal: escape sequences (ANSI/OSC: clear the
screen, retitle the window, fake a hyperlink) and Rich markup must come out inert; malformed or
endless answers must give one error line and exit 1, never a traceback or a hang.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from openred.cli import main
from openred.cli_client import ADMIN_URL_FILE, MAX_ANSWER
from openred.node.admin_keys import ensure_admin_key
from tests.servers import free_port

HOSTILE = "hi\x1b[2J\x1b]0;owned\x07\x9b31m\u202e[link=https://evil.example]click[/link]"
DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON nested past Python's recursion limit
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class Hostile(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/admin/v1/inbox":
            self._send(200, json.dumps({"items": [
                {"received_at": 1, "peer": HOSTILE, "text": HOSTILE}]}).encode())
        elif path == "/admin/v1/peers":
            self._send(200, b"<html>not json")
        elif path == "/admin/v1/file_sharing/offers":
            self._send(200, DEEP)
        elif path == "/admin/v1/sessions":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:  # endless (bounded here only so that a failing test ends)
                for _ in range(MAX_ANSWER // len(chunk) + 64):
                    self.wfile.write(chunk)
            except OSError:
                pass
        else:
            self._send(403, json.dumps({"type": f"urn:x:{HOSTILE}", "title": "no",
                                        "status": 403, "detail": HOSTILE}).encode(),
                       "application/problem+json")

    def do_POST(self) -> None:
        self._send(400, DEEP, "application/problem+json")


@contextlib.contextmanager
def answered_by(handler: type[http.server.BaseHTTPRequestHandler],
                tmp_path: Path) -> Iterator[Path]:
    """A node data directory whose admin URL is a server answering with ``handler``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    ensure_admin_key(data)
    (data / ADMIN_URL_FILE).write_text(f"http://127.0.0.1:{server.server_address[1]}\n")
    try:
        yield data
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def squatted(tmp_path: Path) -> Iterator[Path]:
    with answered_by(Hostile, tmp_path) as data:
        yield data


def _run(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output, result.exception  # output has stderr too


@pytest.mark.parametrize("command", ["inbox", "status"])
def test_hostile_text_reaches_the_terminal_inert(squatted: Path, command: str) -> None:
    code, out, _ = _run(command, "--data-dir", str(squatted))
    assert code == (0 if command == "inbox" else 1), out
    assert "hi" in out
    assert not UNSAFE.search(out), repr(out)
    assert "\x1b]8;" not in out  # no hyperlink from markup


def test_a_malformed_answer_is_one_error_line(squatted: Path) -> None:
    code, out, exc = _run("peers", "--data-dir", str(squatted))
    assert code == 1 and isinstance(exc, SystemExit), (out, exc)
    assert "error:" in out and "Traceback" not in out


@pytest.mark.parametrize("command", [("files",), ("decline", "offer-1")])
def test_an_answer_nested_too_deeply_is_one_error_line(squatted: Path,
                                                       command: tuple[str, ...]) -> None:
    code, out, exc = _run(*command, "--data-dir", str(squatted))
    assert code == 1 and isinstance(exc, SystemExit), (out, exc)
    assert "error:" in out and "Traceback" not in out


def test_an_endless_answer_is_cut_off(squatted: Path) -> None:
    code, out, exc = _run("sessions", "--data-dir", str(squatted))
    assert code == 1 and isinstance(exc, SystemExit), (out, exc)
    assert "too large" in out


SQUATTER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        print("GOT", self.headers.get("Authorization"), flush=True)
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"{}")
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"""


SYSTEM_PYTHON = Path("/usr/bin/python3")  # one that another user may run


@pytest.mark.skipif(os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
                    reason="needs root (and a system python) to listen as another user")
def test_the_admin_key_is_not_sent_to_another_users_listener(tmp_path: Path) -> None:
    """A killed node leaves admin-url behind; another user listening on its (predictable) port
    must not receive the bearer key of the next command."""
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    key = ensure_admin_key(data)
    port = free_port()
    (data / ADMIN_URL_FILE).write_text(f"http://127.0.0.1:{port}\n")
    squatter = subprocess.Popen(
        [str(SYSTEM_PYTHON), "-I", "-c", SQUATTER, str(port)], user=65534, group=65534,
        stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "ready"
        code, out, exc = _run("status", "--data-dir", str(data))
    finally:
        squatter.terminate()
        rest, _ = squatter.communicate(timeout=10)
    assert key not in rest, "the squatter received the admin key"
    assert code == 1 and isinstance(exc, SystemExit), (out, exc)
    assert "another user" in out


class Misshapen(http.server.BaseHTTPRequestHandler):
    """Answers 200 with JSON of another shape than the command expects."""

    body = b"[]"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _answer


@pytest.mark.parametrize(("body", "command"), [
    (b"[]", ("status",)),
    (b'{"items": [5]}', ("peers",)),
    (b"null", ("files",)),
    (b"{}", ("send", "peer", "hi")),
    (b'{"token": 1, "expires_at": "soon"}', ("auth", "login", "--code", "123456")),
    (json.dumps({"uri": HOSTILE}).encode(), ("auth", "enroll")),
])
def test_an_answer_of_another_shape_is_one_error_line(
    tmp_path: Path, body: bytes, command: tuple[str, ...],
) -> None:
    handler = type("H", (Misshapen,), {"body": body})
    with answered_by(handler, tmp_path) as data:
        result = CliRunner().invoke(main, [*command, "--data-dir", str(data)], input="123456\n")
    assert not UNSAFE.search(result.output), repr(result.output)
    if command == ("auth", "enroll"):  # a well-shaped answer with hostile text: shown inert
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (
        result.output, result.exception)
    assert "error: the node's answer is not what this command expects" in result.output


WHEN = 1796211595  # 2026-12-02T11:39:55Z


class Times(http.server.BaseHTTPRequestHandler):
    """A node answering times as it does: Unix times in some fields, ISO text in others."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, answer: object) -> None:
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/admin/v1/sessions":
            self._send({"items": [{"session_id": "s", "peer": "p", "role": "initiator",
                                   "state": "active", "established_at": "2026-12-01T10:00:00Z",
                                   "expires_at": WHEN}]})
        else:
            self._send({"items": [{"offer_id": "o", "direction": "sent", "peer": "p",
                                   "name": "n", "size": 1, "state": "offered",
                                   "expires_at": WHEN}]})

    def do_POST(self) -> None:
        if self.path.endswith("/send"):
            self._send({"message_id": "m", "received_at": WHEN})
        else:
            self._send({"offer_id": "o", "name": "[red]n", "size": 1, "peer": "p",
                        "expires_at": WHEN})


def test_times_are_printed_as_utc_dates_not_unix_seconds(tmp_path: Path) -> None:
    """`send` said "received at 1796211595", `share` "expires at 1796211595" and the sessions
    and files tables showed Unix seconds beside ISO dates: an operator cannot read those."""
    shared = tmp_path / "f"
    shared.write_text("x")
    with answered_by(Times, tmp_path) as data:
        outputs = [
            _run("send", "--data-dir", str(data), "p", "hi"),
            _run("sessions", "--data-dir", str(data)),
            _run("share", "--data-dir", str(data), "p", str(shared)),
            _run("files", "--data-dir", str(data)),
        ]
    for code, output, _ in outputs:
        assert code == 0, output
        flat = output.replace("\n", "").replace("│", "").replace(" ", "")
        assert str(WHEN) not in flat, output
        assert "2026-12-02" in output and "11:39" in output, output
    assert "[red]n" in outputs[2][1]  # the offer's name printed as it is, not as markup


class Recorder(http.server.BaseHTTPRequestHandler):
    """Where a redirect points: records the Authorization headers it receives."""

    seen: ClassVar[list[str | None]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        Recorder.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_admin_key_does_not_follow_a_redirect(tmp_path: Path, status: int) -> None:
    """What answers at the admin URL may be another program of the operator's own (the port of
    a stopped node, taken by a development server that redirects elsewhere): urllib followed
    redirects with every header, the bearer key and the admin token included, to any host. The
    admin API never redirects: the CLI refuses, in one line, and sends nothing further."""
    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=elsewhere.serve_forever, daemon=True)
    thread.start()
    target = f"http://localhost:{elsewhere.server_address[1]}/collect"
    Recorder.seen = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    try:
        with answered_by(Redirecting, tmp_path) as data:
            code, out, exc = _run("status", "--data-dir", str(data))
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()
        thread.join()
    assert Recorder.seen == [], Recorder.seen
    assert code == 1 and isinstance(exc, SystemExit), (out, exc)
    assert "error:" in out and "redirect" in out and "Traceback" not in out, out


def test_the_admin_key_does_not_go_through_a_proxy(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``http_proxy`` in the operator's environment (a corporate proxy, or one a program set)
    without a ``no_proxy`` for 127.0.0.1: urllib sent the admin request, bearer key and all,
    to the proxy. The admin API is on loopback: the CLI talks to it directly, always."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []

    class Node(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "12")
            self.end_headers()
            self.wfile.write(b'{"items":[]}')

    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
    try:
        with answered_by(Node, tmp_path) as data:
            code, out, _ = _run("peers", "--data-dir", str(data))
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()
    assert Recorder.seen == [], Recorder.seen
    assert code == 0, out
