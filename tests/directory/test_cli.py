"""``openred directory init | serve | key | revoke | nodes`` with a real server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from openred.settings import DirectorySettings
from openred.web.signatures import NONCES_FILE
from tests.directory.conftest import Directory, Node
from tests.servers import free_port, running_process


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openred.cli", "directory", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_the_cli_runs_a_directory(tmp_path: Path) -> None:
    data = tmp_path / "d"
    port = free_port()
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "OPENRED_JAIL_SOCKET": f"/tmp/openred-cli-{port}/j.sock"}
    init = cli("init", "--data-dir", str(data), "--port", str(port), "--allow-private-urls",
               env=env)
    assert init.returncode == 0, init.stderr
    key = init.stdout.strip().splitlines()[-1]
    assert cli("key", "--data-dir", str(data), env=env).stdout.strip() == key
    again = cli("init", "--data-dir", str(data), env=env)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert (data / ".env").stat().st_mode & 0o777 == 0o600

    argv = [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)]
    with running_process(argv, port=port, env=env) as server:
        settings = DirectorySettings.load(data, environ=env)
        from openred.crypto.identity import SignKey

        directory = Directory(server.url, settings, SignKey.from_b64url(key), None)  # type: ignore[arg-type]
        alice, bob = Node(directory), Node(directory)
        assert (await alice.register()).status == 201
        assert (await bob.register()).status == 201
        # The operator revokes bob while the server runs (the CLI uses the server's jail).
        revoked = cli("revoke", "--data-dir", str(data), bob.node_id, env=env)
        assert revoked.returncode == 0, revoked.stderr
        # Only the serving process saves its nonces (at its stop), never a command beside it:
        # the next start would take a command's empty cache for the server's.
        assert not (data / NONCES_FILE).exists()
        reply = await alice.call("POST", "/api/v3/tokens/request-connection",
                                 {"target": bob.node_id})
        assert reply.status == 403, reply.body
        # The server keeps appending after the CLI did.
        carol = Node(directory)
        assert (await carol.register()).status == 201
        listing = json.loads(cli("nodes", "--data-dir", str(data), "--json", env=env).stdout)
        assert {n["node_id"]: n["status"] for n in listing} == {
            alice.node_id: "active", bob.node_id: "revoked", carol.node_id: "active"}
        assert "3 nodes" in cli("nodes", "--data-dir", str(data), env=env).stdout
        missing = cli("revoke", "--data-dir", str(data), "a" * 32, env=env)
        assert missing.returncode == 1 and "not known" in missing.stderr
        code = server.stop()
    assert code == 0, server.output()
    assert "Traceback" not in server.output()
    saved = json.loads((data / NONCES_FILE).read_text())
    assert len(saved["entries"]) >= 3 and (data / NONCES_FILE).stat().st_mode & 0o777 == 0o600


def test_operator_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    import socket

    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1"}
    env.pop("OPENRED_JAIL_PASSPHRASE", None)
    data = tmp_path / "d"
    for args in (("serve",), ("key",), ("nodes",), ("revoke", "a" * 32)):
        result = cli(*args, "--data-dir", str(data), env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    port = free_port()
    assert cli("init", "--data-dir", str(data), "--port", str(port), env=env).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = cli("serve", "--data-dir", str(data), env=env)
    assert result.returncode == 1 and "cannot serve" in result.stderr
    assert "Traceback" not in result.stderr
    (data / "jail-passphrase").unlink()
    result = cli("serve", "--data-dir", str(data), env=env)
    assert result.returncode == 1 and "passphrase" in result.stderr


def test_a_jail_socket_path_too_long_for_unix_sockets_is_named_in_one_line(
    tmp_path: Path,
) -> None:
    """A Unix socket's path holds at most 107 bytes; a longer one is an OSError without errno
    (no strerror): init said "cannot bind …/jail.sock: None" (seen when pytest-xdist lengthened
    the suite's temporary paths)."""
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1"}
    env.pop("OPENRED_JAIL_PASSPHRASE", None)
    env.pop("OPENRED_JAIL_SOCKET", None)
    data = tmp_path / ("d" * 110)
    result = cli("init", "--data-dir", str(data), "--port", str(free_port()), env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "AF_UNIX path too long" in lines[0] and ": None" not in lines[0], lines[0]
