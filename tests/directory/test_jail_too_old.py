"""A directory whose external jail is older than it: a one-line start failure.

A jail from before the jail minted grant tokens refuses ``seal_to`` as an unexpected argument,
which refuses the whole coalesced ``sign_many`` call: every grant, and the push signatures and
checkpoints batched with it, failed with 503 until the operator restarted the jail. Real
processes: the jail (today's code with ``seal_to`` refused as the old one did, run apart from
the directory as the service manager would) and ``openred directory init``/``serve``.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from pathlib import Path

from tests.crypto_jail.test_server import JailProc, dev_keystore, jail_env, short_dir
from tests.directory.test_external_jail import cli, directory_env
from tests.servers import free_port

OLD_JAIL = """
import sys
import crypto_jail.ops as ops
from crypto_jail.protocol import BAD_REQUEST, OpRefused

def refused(item):  # what a jail from before seal_to answers: the whole call is refused
    raise OpRefused(BAD_REQUEST, "arguments wrong: missing [], unexpected ['seal_to']")

ops._seal_to = refused
from crypto_jail.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def old_jail(root: Path) -> JailProc:
    keystore, _ = dev_keystore(root)
    socket_path = root / "run" / "jail.sock"
    stderr_path = root / "jail-stderr"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-c", OLD_JAIL, "serve", "--insecure-test-kdf",
             "--keystore", str(keystore), "--socket", str(socket_path)],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=jail_env())
    proc = JailProc(popen, socket_path, stderr_path)
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], 30)
    if not ready or not popen.stdout.readline().startswith(b"READY "):
        proc.stop()
        raise RuntimeError(f"the jail did not start: {proc.stderr()}")
    return proc


def test_a_directory_refuses_to_start_on_a_jail_that_cannot_seal_grant_tokens(
    tmp_path: Path,
) -> None:
    root = short_dir()
    jail = None
    try:
        jail = old_jail(root)
        data, port = tmp_path / "d", free_port()
        env = directory_env(None, port)
        init = cli("init", "--data-dir", str(data), "--port", str(port),
                   "--allow-private-urls", "--jail-socket", str(jail.socket_path), env=env)
        assert init.returncode == 0, init.stderr
        serve = subprocess.run(
            [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)],
            env=env, capture_output=True, text=True, timeout=30, check=False)
        assert serve.returncode == 1, serve.stderr
        assert "Traceback" not in serve.stderr
        assert serve.stderr.strip().splitlines()[-1].startswith("error: "), serve.stderr
        assert "cannot seal grant tokens" in serve.stderr and "restart" in serve.stderr, (
            serve.stderr)
        assert jail.popen.poll() is None  # a jail it did not start: left running
    finally:
        if jail is not None:
            jail.stop()
        shutil.rmtree(root, ignore_errors=True)
