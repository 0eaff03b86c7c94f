"""A directory and nodes started with the real ``openred`` commands, as processes on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import ServerProcess, free_port, start_process

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_")}
    env.update({"OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
                "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def openred(*args: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``openred ARGS`` (this interpreter); the completed process."""
    result = subprocess.run(
        [sys.executable, "-m", "openred.cli", *args], capture_output=True, text=True,
        env=env or cli_env(), cwd=ROOT, timeout=120, check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openred {' '.join(args)} failed:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result




def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Network:
    root: Path
    env: dict[str, str]
    directory_key: str = ""
    directory_port: int = 0
    servers: dict[str, ServerProcess] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def directory_url(self) -> str:
        return f"http://127.0.0.1:{self.directory_port}"

    def init_directory(self) -> None:
        self.directory_port = free_port()
        out = openred("directory", "init", "--data-dir", str(self.root / "directory"),
                      "--port", str(self.directory_port), "--allow-private-urls", env=self.env)
        self.directory_key = out.stdout.strip().splitlines()[-1]

    def start_directory(self) -> ServerProcess:
        server = start_process(
            [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir",
             str(self.root / "directory")], port=self.directory_port, env=self.env, cwd=ROOT)
        self.servers["directory"] = server
        return server

    def init_node(self, name: str, port: int | None = None) -> str:
        port = port or free_port()
        out = openred("node", "init", "--data-dir", str(self.root / name), "--directory",
                      self.directory_url, "--directory-key", self.directory_key, "--api-url",
                      f"http://127.0.0.1:{port}", "--admin-port", str(free_port()),
                      "--allow-private-urls", env=self.env)
        self.ids[name] = out.stdout.strip().splitlines()[-1]
        return self.ids[name]

    def node_port(self, name: str) -> int:
        for line in (self.root / name / ".env").read_text().splitlines():
            if line.startswith("OPENRED_PORT="):
                return int(line.split("=", 1)[1])
        raise AssertionError("no port")

    def start_node(self, name: str, *, tries: int = 3) -> ServerProcess:
        """``openred node serve``, once its admin API answers too. Its admin port was only
        picked (``free_port``) at init: when the node says another socket took it meanwhile
        (a client's ephemeral port, another test's server), a fresh one is written to its
        ``.env`` and the node started again — a test's port, not the product, was wrong."""
        for attempt in range(tries):
            last = attempt + 1 == tries
            try:
                server = start_process(
                    [sys.executable, "-m", "openred.cli", "node", "serve", "--data-dir",
                     str(self.root / name)], port=self.node_port(name), env=self.env, cwd=ROOT)
            except RuntimeError as exc:  # it exited before its API port answered
                if last or "Address already in use" not in str(exc):
                    raise
                self._new_admin_port(name)
                continue
            self.servers[name] = server
            # serving peers comes first; wait for the admin API too
            deadline = time.monotonic() + 20
            while not (self.root / name / "admin-url").exists():
                if (server.proc.poll() is not None and not last
                        and "Address already in use" in server.output()):
                    self._new_admin_port(name)
                    break
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
            else:
                return server
        raise AssertionError(f"{name} did not start in {tries} tries")

    def _new_admin_port(self, name: str) -> None:
        env_file = self.root / name / ".env"
        lines = [f"OPENRED_ADMIN_PORT={free_port()}" if line.startswith("OPENRED_ADMIN_PORT=")
                 else line for line in env_file.read_text().splitlines()]
        env_file.write_text("\n".join(lines) + "\n")

    def cli(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return openred(*args, "--data-dir", str(self.root / name), env=self.env, check=check)

    def cli_json(self, name: str, *args: str) -> Any:
        return json.loads(self.cli(name, *args, "--json").stdout)

    def wait_registered(self, name: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status: dict[str, Any] = self.cli_json(name, "status")
            if status["registration"]["registered"] and status["registration"]["last_heartbeat"]:
                return status
            assert time.monotonic() < deadline, status
            time.sleep(0.1)

    def connected_pair(self) -> tuple[str, str]:
        """A served directory and nodes ``a`` and ``b``, registered, ``a`` connected to ``b``.

        Returns the two node ids (their processes are ``servers["a"]`` and ``servers["b"]``).
        """
        self.init_directory()
        self.start_directory()
        a_id, b_id = self.init_node("a"), self.init_node("b")
        self.start_node("a")
        self.start_node("b")
        self.wait_registered("b")
        self.cli_json("a", "connect", b_id)
        return a_id, b_id

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


@contextmanager
def network(root: Path, **env: str) -> Iterator[Network]:
    net = Network(root, cli_env(**env))
    try:
        yield net
    finally:
        net.stop_all()
        shutil.rmtree(root, ignore_errors=True)
