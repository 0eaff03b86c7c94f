"""``make demo``: a live OpenRed network on loopback — a directory and three nodes as processes.

Every participant is created and started with the real commands (``openred directory init |
serve``, ``openred node init | serve``) under ``./demo-data/<participant>/``, each with its own
crypto jail (keystore encrypted with Argon2id) and signed log. Then the story, driven through
the nodes' admin APIs exactly as ``openred connect | send`` do:

1. alice connects to bob and to carol (a grant from the directory, a Noise handshake each) and
   they exchange messages;
2. someone on the path to carol recorded alice's first handshake message and sends it again:
   carol's server refuses it (the grant is used) and logs the attempt;
3. the directory is stopped: alice and bob keep talking on their session;
4. bob (and his jail) are killed with SIGKILL, bob is started again and resumes the session;
5. everything stops, every log is verified with ``audit_tools`` and a summary is printed.

Every process the demo starts is stopped by its pid when it ends, fails or is interrupted
(Ctrl-C); the servers run in their own sessions, so the terminal's SIGINT reaches only the demo.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from audit_tools.verify import verify
from openred.cli_client import AdminClient
from openred.errors import OpenRedError

NODES = ("alice", "bob", "carol")
HOST = "127.0.0.1"
HANDSHAKE_PATH = "/api/v3/p2p/handshake"

console = Console(highlight=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (read from /proc; empty where there is no /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback http
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Processes:
    """Every process the demo started (and the jails they started), stopped by pid at the end."""

    logs: Path
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    jails: dict[str, list[int]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str], health: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        self.started[name] = proc
        deadline = time.monotonic() + 60
        while not _answers(health):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                   f"{self.logs / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within 60 s")
            time.sleep(0.05)
        self.jails[name] = children(proc.pid)

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> int:
        proc = self.started.pop(name)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for pid in self.jails.pop(name, []):
            _reap(pid, signal.SIGKILL if sig == signal.SIGKILL else signal.SIGTERM)
        return int(proc.returncode)

    def stop_all(self) -> None:
        for name in list(self.started):
            self.stop(name)
        for name in list(self.jails):
            for pid in self.jails.pop(name):
                _reap(pid, signal.SIGTERM)


def _interrupt(proc: subprocess.Popen[str]) -> None:
    """Stop a command still running (Ctrl-C during ``init``): SIGINT lets it stop its jail."""
    if proc.poll() is not None:
        return
    jails = children(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for pid in jails:
        _reap(pid, signal.SIGTERM)


def _reap(pid: int, sig: signal.Signals) -> None:
    """Stop a jail the demo's server started, if it outlived it (by pid only)."""
    deadline = time.monotonic() + 5
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Tap:
    """A forwarding proxy in front of a node that records every handshake request it carries."""

    def __init__(self, port: int, target_port: int) -> None:
        self.recorded: list[bytes] = []
        tap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._forward("POST")

            def do_GET(self) -> None:
                self._forward("GET")

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == HANDSHAKE_PATH:
                    tap.recorded.append(body)
                conn = http.client.HTTPConnection(HOST, target_port, timeout=30)
                try:
                    conn.request(method, self.path, body=body or None,
                                 headers={k: v for k, v in self.headers.items()
                                          if k.lower() != "connection"})
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = http.server.ThreadingHTTPServer((HOST, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Demo:
    def __init__(self, out: Path) -> None:
        self.out = out.resolve()
        self.sockets = Path(tempfile.mkdtemp(prefix="openred-demo-"))
        self.procs = Processes(self.out)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_")}
        self.env["OPENRED_JAIL_KDF"] = "interactive"
        self.ports = {name: free_port() for name in ("directory", *NODES, "carol-tap")}
        self.ids: dict[str, str] = {}
        self.admin: dict[str, AdminClient] = {}
        self.tap: Tap | None = None
        self.facts: dict[str, dict[str, Any]] = {name: {} for name in ("directory", *NODES)}

    def cli(self, *args: str, name: str = "") -> str:
        env = dict(self.env)
        if name:
            env["OPENRED_JAIL_SOCKET"] = str(self.sockets / name / "jail.sock")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "openred.cli", *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            _interrupt(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"openred {' '.join(args[:2])} failed: {stderr.strip()}")
        return stdout

    def step(self, text: str) -> None:
        console.print(f"[bold cyan]▶[/] {text}")

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    # -- starting --

    def start_directory(self) -> None:
        env = {**self.env, "OPENRED_JAIL_SOCKET": str(self.sockets / "directory" / "jail.sock"),
               "OPENRED_HEARTBEAT_INTERVAL": "10"}
        self.procs.start("directory", [sys.executable, "-m", "openred.cli", "directory",
                                       "serve", "--data-dir", str(self.out / "directory")],
                         env, self.url("directory") + "/api/v3/health")

    def start_node(self, name: str) -> None:
        env = {**self.env, "OPENRED_JAIL_SOCKET": str(self.sockets / name / "jail.sock")}
        argv = [sys.executable, "-m", "openred.cli", "node", "serve", "--data-dir",
                str(self.out / name), "--port", str(self.ports[name])]
        self.procs.start(name, argv, env, f"{self.url(name)}/api/v3/health")
        deadline = time.monotonic() + 30
        while not (self.out / name / "admin-url").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}'s admin API did not start")
            time.sleep(0.05)
        self.admin[name] = AdminClient.from_data_dir(self.out / name)

    def init(self) -> None:
        for name in ("directory", *NODES):
            shutil.rmtree(self.out / name, ignore_errors=True)
            (self.sockets / name).mkdir(mode=0o700)
        self.step("openred directory init && openred directory serve")
        key = self.cli("directory", "init", "--data-dir", str(self.out / "directory"),
                       "--port", str(self.ports["directory"]), "--allow-private-urls",
                       name="directory").strip().splitlines()[-1]
        self.start_directory()
        self.step("openred node init && openred node serve, for " + ", ".join(NODES))
        inits = {}
        for name in NODES:
            # carol is reached through a tap that records what travels to her
            api = self.url("carol-tap") if name == "carol" else self.url(name)
            env = {**self.env, "OPENRED_JAIL_SOCKET": str(self.sockets / name / "jail.sock")}
            inits[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "openred.cli", "node", "init", "--data-dir",
                 str(self.out / name), "--directory", self.url("directory"),
                 "--directory-key", key, "--api-url", api, "--admin-port",
                 str(free_port()), "--allow-private-urls"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True)
        try:
            for name, proc in inits.items():
                stdout, stderr = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"openred node init ({name}) failed: {stderr.strip()}")
                self.ids[name] = stdout.strip().splitlines()[-1]
        finally:
            for proc in inits.values():
                _interrupt(proc)
        self.tap = Tap(self.ports["carol-tap"], self.ports["carol"])
        for name in NODES:
            self.start_node(name)
        for name in NODES:
            self.wait_registered(name)
        table = Table(title="the network")
        for column in ("participant", "node id", "API URL"):
            table.add_column(column, no_wrap=True)
        table.add_row("directory", "—", self.url("directory"))
        for name in NODES:
            api = f"{self.url('carol-tap')} (tap)" if name == "carol" else self.url(name)
            table.add_row(name, self.ids[name], api)
        console.print(table)

    def wait_registered(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            status = self.admin[name].get("status")
            reg = status.get("registration") or {}
            if reg.get("registered") and reg.get("last_heartbeat"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not register: {reg.get('last_error')}")
            time.sleep(0.05)

    # -- the story --

    def send(self, sender: str, to: str, text: str) -> None:
        receipt = self.admin[sender].post("send", {"peer": self.ids[to], "text": text})
        console.print(f"  {sender} → {to}: {text!r}  [dim](receipt {receipt['message_id']})[/]")

    def story(self) -> None:
        alice = self.admin["alice"]
        for peer in ("bob", "carol"):
            self.step(f"openred connect {peer}  (alice asks the directory for a grant, "
                      "then shakes hands with " + peer + ")")
            session = alice.post("connect", {"peer": self.ids[peer]})
            console.print(f"  session {session['session_id']} alice ↔ {peer}")
            self.facts[peer]["session"] = session["session_id"]
        self.step("they exchange end-to-end encrypted messages")
        self.send("alice", "bob", "hello bob, it's alice")
        self.send("bob", "alice", "hi alice! bob here")
        self.send("alice", "carol", "hello carol")
        self.send("carol", "alice", "hello alice, carol speaking")

        self.step("an eavesdropper replays alice's recorded handshake message to carol")
        assert self.tap is not None and self.tap.recorded, "the tap saw no handshake"
        status, problem = _post(self.url("carol") + HANDSHAKE_PATH, self.tap.recorded[0])
        if status < 400:
            raise RuntimeError(f"carol accepted a replayed handshake ({status})")
        console.print(f"  carol refuses it: {status} {problem.get('type')} — "
                      f"{problem.get('detail')}")
        self.facts["carol"]["replay"] = f"refused ({status})"

        self.step("the directory stops (SIGTERM); alice and bob keep talking")
        code = self.procs.stop("directory")
        console.print(f"  directory exited with {code}")
        self.send("alice", "bob", "the directory is gone")
        self.send("bob", "alice", "we do not need it any more")

        self.step("bob is killed with SIGKILL (and his jail), then started again")
        self.procs.stop("bob", signal.SIGKILL)
        self.start_node("bob")
        status_text = self.admin["bob"].get("status")
        console.print(f"  bob is back: {status_text['sessions']['active']} active session(s) "
                      "restored from his log; the directory is unreachable, he serves peers")
        self.send("alice", "bob", "welcome back, bob")
        self.send("bob", "alice", "thanks, same session as before")
        for name in NODES:
            facts = self.facts[name]
            facts["inbox"] = len(self.admin[name].get("inbox")["items"])
            facts["sessions"] = len(self.admin[name].get("sessions")["items"])

    def finish(self) -> bool:
        self.step("every process stops (SIGTERM); every log is verified with audit_tools")
        for name in NODES:
            self.procs.stop(name)
        table = Table(title="OpenRed demo — live network on loopback")
        for column in ("participant", "entries", "verified", "checkpoints", "sessions",
                       "inbox", "notes"):
            table.add_column(column, no_wrap=column != "notes")
        ok = True
        for name in ("directory", *NODES):
            report = verify(self.out / name)
            ok = ok and report.ok
            facts = self.facts[name]
            notes = {"directory": "stopped mid-story", "bob": "killed, restarted",
                     "carol": f"replay {facts.get('replay', '?')}"}.get(name, "")
            table.add_row(name, str(report.entries),
                          "[green]ok[/]" if report.ok else f"[red]{report.reason}[/]",
                          str(report.checkpoints_checked), str(facts.get("sessions", "—")),
                          str(facts.get("inbox", "—")), notes)
        console.print(table)
        return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openred.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-data"),
                        help="where the participants' data directories go (default demo-data)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    console.print(f"[bold]OpenRed demo[/] — a live network on loopback, data under {out}/")
    demo = Demo(out)
    try:
        demo.init()
        demo.story()
        ok = demo.finish()
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: stopping every process the demo started[/]")
        return 130
    except (RuntimeError, OSError, AssertionError, OpenRedError) as exc:
        console.print(f"[red]demo failed:[/] {exc}  (logs: {out}/*.log)")
        return 1
    finally:
        with _ignoring_interrupts():
            demo.procs.stop_all()
            if demo.tap is not None:
                demo.tap.close()
            shutil.rmtree(demo.sockets, ignore_errors=True)
    console.print(f"\nfinished in {time.monotonic() - started:.1f} s; no process left running.")
    console.print(f"Check any log yourself:  .venv/bin/audit_tools verify {out}/alice\n"
                  f"Each process's output:   {out}/<participant>.log")
    return 0 if ok else 1


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    raise SystemExit(main())
