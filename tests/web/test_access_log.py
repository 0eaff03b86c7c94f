"""Hypercorn's access line carries the request id the middleware gives the request.

Before, a served directory or node wrote no access line at all (Hypercorn's access log was off
and nothing turned it on), and with it on the line had no request id, so an operator could not
tie a line to the request's own log records or to the ``X-Request-Id`` a client saw.
``OPENRED_ACCESS_LOG=1`` now turns it on (stdout) and the line ends with ``request_id=<id>``:
the id the answer's ``X-Request-Id`` echoes (the client's when it sent a valid one, else a
fresh one). Tested on a real directory and a real node (with the monitoring module, which
gives a node's requests their ids), each its own process, including a P2P call answered by
the node's ASGI fast path.
"""

from __future__ import annotations

import io
import json
import logging
import re
import urllib.error
import urllib.request

import pytest
from hypercorn.logging import AccessLogAtoms

from openred.errors import ConfigurationError
from openred.web.logging import ACCESS_LOGGER, access_logger
from openred.web.serve import ACCESS_LOG_FORMAT, hypercorn_config
from tests.cli.network import network
from tests.crypto_jail.test_server import short_dir


def call(url: str, *, method: str = "GET", data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    """Status and echoed ``X-Request-Id`` of one request."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers.get("X-Request-Id")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Request-Id")


def access_lines(output: str, method: str, path: str) -> list[tuple[int, str]]:
    """(status, request id) of every access line of ``method path`` in a server's output."""
    pattern = re.compile(rf'"{method} {re.escape(path)} 1\.1" (\d{{3}}) .* request_id=(\S+)$')
    return [(int(m.group(1)), m.group(2)) for line in output.splitlines()
            if (m := pattern.search(line))]


def test_the_access_log_is_off_unless_asked_and_its_line_names_the_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENRED_ACCESS_LOG", raising=False)
    assert hypercorn_config("127.0.0.1", 1).accesslog is None
    assert hypercorn_config("127.0.0.1", 1, access_log=True).accesslog == "-"
    monkeypatch.setenv("OPENRED_ACCESS_LOG", "1")
    config = hypercorn_config("127.0.0.1", 1)
    assert config.accesslog == "-"
    assert hypercorn_config("127.0.0.1", 1, access_log=False).accesslog is None
    monkeypatch.setenv("OPENRED_ACCESS_LOG", "yes please")
    with pytest.raises(ConfigurationError):
        hypercorn_config("127.0.0.1", 1)
    # The id comes from the answer's header (what the middleware set), not the request's.
    scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/x",
             "query_string": b"", "scheme": "http", "client": ("127.0.0.1", 5),
             "headers": [(b"x-request-id", b"bad id!")]}
    answer = {"status": 200, "headers": [(b"X-Request-Id", b"fresh-1")]}
    line = config.access_log_format % AccessLogAtoms(scope, answer, 0.01)  # type: ignore[arg-type]
    assert config.access_log_format == ACCESS_LOG_FORMAT
    assert line.endswith('"GET /x 1.1" 200 - "-" "-" request_id=fresh-1')
    line = ACCESS_LOG_FORMAT % AccessLogAtoms(scope, None, 0.01)  # type: ignore[arg-type]
    assert line.endswith("request_id=-")


def test_served_directory_and_node_log_each_request_with_its_id() -> None:
    root = short_dir()
    with network(root, OPENRED_ACCESS_LOG="1",
                 OPENRED_MODULES="messaging,file_sharing,monitoring") as net:
        net.init_directory()
        directory = net.start_directory()
        net.init_node("a")
        node = net.start_node("a")

        status, echoed = call(directory.url + "/api/v3/health",
                              headers={"X-Request-Id": "dir-req-1"})
        assert echoed == "dir-req-1"
        fresh_status, fresh = call(directory.url + "/api/v3/directory/key")
        bad_status, replaced = call(directory.url + "/api/v3/directory/key",
                                    headers={"X-Request-Id": "not a token"})
        assert fresh and replaced and replaced != "not a token"

        node_status, node_echoed = call(node.url + "/api/v3/health",
                                        headers={"X-Request-Id": "node-req-1"})
        assert node_echoed == "node-req-1"
        p2p_status, p2p_echoed = call(
            node.url + "/api/v3/p2p/messaging/send", method="POST", data=b'{"x": 1}',
            headers={"Content-Type": "application/json", "X-Request-Id": "p2p-req-1"})
        assert p2p_status == 400 and p2p_echoed == "p2p-req-1"
        net.stop_all()  # every line is out once the processes ended

        dir_out, node_out = directory.output(), node.output()
        assert (status, "dir-req-1") in access_lines(dir_out, "GET", "/api/v3/health")
        assert access_lines(dir_out, "GET", "/api/v3/directory/key") == [
            (fresh_status, fresh), (bad_status, replaced)]
        assert "not a token" not in dir_out
        assert (node_status, "node-req-1") in access_lines(node_out, "GET", "/api/v3/health")
        assert access_lines(node_out, "POST", "/api/v3/p2p/messaging/send") == [
            (400, "p2p-req-1")]


def test_with_json_logs_an_access_line_is_a_json_object_with_the_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENRED_LOG_FORMAT", "json")
    monkeypatch.setenv("OPENRED_SECRET_FOR_TEST", "never-in-a-log")
    config = hypercorn_config("127.0.0.1", 1, access_log=True)
    assert isinstance(config.accesslog, logging.Logger)
    assert config.accesslog.name == ACCESS_LOGGER
    out = io.StringIO()
    logger = access_logger(stream=out)
    assert logger is not None
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/api/v3/x",
             "query_string": b"a=1", "scheme": "http", "client": ("127.0.0.1", 5),
             "headers": [(b"authorization", b"Bearer secret-token")]}
    answer = {"status": 413, "headers": [(b"X-Request-Id", b"req-7"),
                                         (b"Content-Length", b"120")]}
    logger.info(ACCESS_LOG_FORMAT, AccessLogAtoms(scope, answer, 0.0125))  # type: ignore[arg-type]
    logger.info(ACCESS_LOG_FORMAT, AccessLogAtoms(scope, None, 0.5))  # type: ignore[arg-type]
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "access" and first["logger"] == ACCESS_LOGGER
    assert first["request_id"] == "req-7"
    assert (first["method"], first["path"], first["status"], first["bytes"]) == (
        "POST", "/api/v3/x?a=1", 413, 120)
    assert first["client"] == "127.0.0.1:5" and first["duration_ms"] == 12.5
    assert first["message"].endswith('"POST /api/v3/x 1.1" 413 120 "-" "-" request_id=req-7')
    assert second["request_id"] is None and second["status"] is None
    assert "never-in-a-log" not in out.getvalue() and "secret-token" not in out.getvalue()


def test_with_console_logs_the_access_line_stays_hypercorns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENRED_LOG_FORMAT", "console")
    assert access_logger() is None
    assert hypercorn_config("127.0.0.1", 1, access_log=True).accesslog == "-"


def test_a_served_directory_writes_json_access_lines_with_json_logs() -> None:
    root = short_dir()
    with network(root, OPENRED_ACCESS_LOG="1", OPENRED_LOG_FORMAT="json") as net:
        net.init_directory()
        directory = net.start_directory()
        status, echoed = call(directory.url + "/api/v3/health",
                              headers={"X-Request-Id": "json-req-1"})
        assert echoed == "json-req-1"
        missing, _ = call(directory.url + "/api/v3/nodes/discover?node_id=x")
        net.stop_all()
        records = [json.loads(line) for line in directory.output().splitlines()
                   if line.startswith("{")]
    access = [r for r in records if r.get("event") == "access"]
    mine = [r for r in access if r["request_id"] == "json-req-1"]
    assert [(r["method"], r["path"], r["status"]) for r in mine] == [
        ("GET", "/api/v3/health", status)]
    assert any(r["path"] == "/api/v3/nodes/discover?node_id=x" and r["status"] == missing
               for r in access)
