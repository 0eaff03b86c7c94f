"""`openred node init | serve` and the operator commands, against real processes on loopback.

A directory and two nodes are started with the real commands; A connects to B and they talk;
the commands answer tables and JSON; the admin API refuses requests without the bearer key;
the directory stops and A and B keep talking while A reports the directory unreachable; SIGTERM
stops a node cleanly (exit 0, its jail gone); a node whose URL changed re-registers a record
with the next version.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from openred.web.signatures import NONCES_FILE
from tests.cli.network import Network, alive, network, openred
from tests.crypto_jail.test_server import short_dir
from tests.servers import children, free_port


def test_commands_say_in_one_line_that_no_node_is_running() -> None:
    root = short_dir()
    with network(root) as net:
        net.directory_key = "PKQ1yLMr6W6wCGTapSUzkElojDYEehRbKcEiinBJLTM"
        net.directory_port = free_port()
        net.init_node("a")
        data = root / "a"
        for name in ("admin-key", ".env", "keystore.json"):
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        # Only the serving node saves its nonces: an empty file left by a command would be
        # trusted by the next start of a server that crashed.
        assert not (data / NONCES_FILE).exists()
        for command in (("status",), ("send", "x" * 32, "hello")):
            result = net.cli("a", *command, check=False)
            assert result.returncode == 1, command
            assert "is not running" in result.stderr and "openred node serve" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert "Traceback" not in result.stderr
        missing = openred("status", "--data-dir", str(root / "nowhere"), check=False)
        assert missing.returncode == 1 and "openred node init" in missing.stderr
        # init refuses a bad directory key and an initialized directory
        bad = openred("node", "init", "--data-dir", str(root / "b"), "--directory",
                      "http://127.0.0.1:1", "--directory-key", "nope", "--api-url",
                      "http://127.0.0.1:2", env=net.env, check=False)
        assert bad.returncode == 1 and "OPENRED_DIRECTORY_KEY" in bad.stderr
        again = openred("node", "init", "--data-dir", str(data), "--directory",
                        net.directory_url, "--directory-key", net.directory_key, "--api-url",
                        "http://127.0.0.1:2", env=net.env, check=False)
        assert again.returncode == 1 and "initialized" in again.stderr


def _admin(net: Network, name: str, path: str, key: str | None) -> tuple[int, dict[str, object]]:
    url = (net.root / name / "admin-url").read_text().strip()
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    req = urllib.request.Request(f"{url}/admin/v1/{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers["Content-Type"] == "application/problem+json"
        return exc.code, json.loads(exc.read())


def test_a_network_run_with_the_cli_survives_the_directory_and_stops_cleanly() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="2") as net:
        net.init_directory()
        net.start_directory()
        a_id, b_id = net.init_node("a"), net.init_node("b")
        a, b = net.start_node("a"), net.start_node("b")
        status = net.wait_registered("a")
        assert status["node_id"] == a_id and status["record_version"] == 1
        net.wait_registered("b")
        # the admin API wants the bearer key
        assert _admin(net, "a", "status", None)[0] == 401
        code, problem = _admin(net, "a", "status", "wrong")
        assert code == 401 and problem["type"] == "urn:openred:problem:admin-unauthorized"
        key = (root / "a" / "admin-key").read_text().strip()
        assert _admin(net, "a", "status", key)[0] == 200

        session = net.cli_json("a", "connect", b_id)
        assert session["peer"] == b_id
        assert "delivered" in net.cli("a", "send", b_id[:6], "hello B").stdout
        receipt = net.cli_json("b", "send", a_id, "hello A")
        assert receipt["session_id"] == session["session_id"]
        assert [m["text"] for m in net.cli_json("b", "inbox")] == ["hello B"]
        table = net.cli("a", "inbox").stdout
        assert "hello A" in table and "1 messages" in table
        assert [s["state"] for s in net.cli_json("a", "sessions")] == ["active"]
        peers = net.cli_json("b", "peers")
        assert [p["node_id"] for p in peers] == [a_id] and peers[0]["active_sessions"] == 1
        unknown = net.cli("a", "send", "zzzz", "hi", check=False)
        assert unknown.returncode == 1 and "no known peer" in unknown.stderr

        # The directory goes away: A and B keep talking; A says the directory is unreachable.
        assert net.servers.pop("directory").stop() == 0
        net.cli("a", "send", b_id, "the directory is down")
        net.cli("b", "send", a_id, "still here")
        deadline = time.monotonic() + 20
        while net.cli_json("a", "status")["registration"]["directory_reachable"] is not False:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "directory unreachable" in a.output()
        refused = net.cli("a", "connect", b_id, check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr

        # SIGTERM stops a node cleanly: exit 0, its jail gone, the admin URL removed.
        jails = children(a.pid)
        assert jails
        os.kill(a.pid, signal.SIGTERM)
        assert a.proc.wait(30) == 0, a.output()
        assert not any(alive(pid) for pid in jails)
        assert not (root / "a" / "admin-url").exists()
        saved = json.loads((root / "a" / NONCES_FILE).read_text())
        assert saved["v"] == 1 and stat.S_IMODE((root / "a" / NONCES_FILE).stat().st_mode) == 0o600

        # A moves to another port: it signs version 2 of its record and registers it.
        net.start_directory()
        port = free_port()
        env_file = root / "a" / ".env"
        text = re.sub(r"OPENRED_PORT=\d+", f"OPENRED_PORT={port}", env_file.read_text())
        text = re.sub(r"OPENRED_PUBLIC_URL=.*", f"OPENRED_PUBLIC_URL=http://127.0.0.1:{port}",
                      text)
        env_file.write_text(text)
        net.start_node("a")
        assert net.wait_registered("a")["record_version"] == 2
        with sqlite3.connect(root / "directory" / "openred.db") as conn:
            version, url = conn.execute("SELECT version, api_url FROM directory_nodes "
                                        "WHERE node_id = ?", (a_id,)).fetchone()
        assert (version, url) == (2, f"http://127.0.0.1:{port}")
        # A's session with B resumed from its log (B learns A's new URL from its next grant).
        net.cli("a", "send", b_id, "back on another port")
        assert "back on another port" in [m["text"] for m in net.cli_json("b", "inbox")]
        assert b.proc.poll() is None


@pytest.mark.parametrize("name", ["connect", "send"])
def test_sensitive_routes_are_marked(name: str) -> None:
    from openred.node.admin import create_admin_app
    from openred.node.admin_auth import is_sensitive

    app = create_admin_app(__import__("quart").Quart("x"), "k")
    view = app.view_functions[name]
    assert is_sensitive(view)
    assert not is_sensitive(app.view_functions["status"])


def test_read_admin_key_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    from openred.errors import ConfigurationError
    from openred.node.admin_keys import ensure_admin_key, read_admin_key

    key = ensure_admin_key(tmp_path)
    assert read_admin_key(tmp_path) == key == ensure_admin_key(tmp_path)
    (tmp_path / "admin-key").chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        read_admin_key(tmp_path)
