"""The jail process over its socket: bad clients never hurt good ones; peers are checked by uid.

Also holds the small process helpers the other jail tests import (``spawn_jail``, ``RawClient``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from crypto_jail.keystore import create_keystore
from tests.crypto_jail.test_ops import initiate_args, mint, respond_args

# --- helpers other jail tests import ---------------------------------------------------------

PYTHON = sys.executable
FAST_KDF_ENV = {"OPENRED_JAIL_KDF": "min"}


def short_dir() -> Path:
    """A private temp dir with a short path (Unix socket paths are limited to 107 bytes).

    In the suite's temporary folder (tests/conftest.py) when its path is short, else in /tmp.
    """
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="oj", dir=base if len(base) <= 40 else "/tmp"))


def jail_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_JAIL")}
    env.update(FAST_KDF_ENV)
    env.update(extra)
    return env


def _test_kdf(args: tuple[str, ...], test_kdf: bool) -> list[str]:
    """``args`` with ``--insecure-test-kdf`` after the command: tests use the "min" KDF."""
    if not test_kdf or not args or args[0] not in {"init", "serve"}:
        return list(args)
    return [args[0], "--insecure-test-kdf", *args[1:]]


def run_jail_cli(*args: str, env: dict[str, str] | None = None,
                 timeout: float = 60, test_kdf: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-I", "-m", "crypto_jail", *_test_kdf(args, test_kdf)],
        capture_output=True, text=True,
        env=env or jail_env(), timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )


class JailProc:
    """A jail started with ``serve``; stderr goes to a file the test can read."""

    def __init__(self, popen: subprocess.Popen[bytes], socket_path: Path, stderr: Path) -> None:
        self.popen = popen
        self.socket_path = socket_path
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


def spawn_jail(
    keystore: Path, socket_path: Path, *args: str, env: dict[str, str] | None = None,
    timeout: float = 30.0, test_kdf: bool = True,
) -> JailProc:
    """Start ``python -I -m crypto_jail serve`` and wait for its READY line."""
    stderr_path = socket_path.parent.parent / f"stderr-{socket_path.name}-{time.monotonic_ns()}"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [PYTHON, "-I", "-m", "crypto_jail",
             *_test_kdf(("serve", "--keystore", str(keystore), "--socket", str(socket_path),
                         *args), test_kdf)],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
            env=env or jail_env(),
        )
    proc = JailProc(popen, socket_path, stderr_path)
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    line = popen.stdout.readline() if ready else b""
    if line != f"READY {socket_path}\n".encode():
        proc.stop()
        raise RuntimeError(f"jail did not start: {line!r} {proc.stderr()}")
    return proc


def dev_keystore(directory: Path) -> tuple[Path, dict[str, str]]:
    """A development (clear) keystore, made in-process for speed."""
    path = directory / "keystore.json"
    keystore = create_keystore(path, None)
    return path, keystore.public_info()


class RawClient:
    """A blocking client speaking the frame format by hand (so tests can also break it)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.next_id = 1

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_body(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _recv_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def recv(self) -> dict[str, Any] | None:
        """The next answer, or None on EOF."""
        header = self._recv_exactly(4)
        if header is None:
            return None
        body = self._recv_exactly(struct.unpack(">I", header)[0])
        return None if body is None else json.loads(body)

    def call(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = self.next_id
        self.next_id += 1
        self.send_body(json.dumps({"id": request_id, "op": op, "args": args or {}}).encode())
        answer = self.recv()
        assert answer is not None, "jail closed the connection"
        assert answer["id"] == request_id
        return answer

    def result(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.call(op, args)
        assert answer["ok"], answer
        result: dict[str, Any] = answer["result"]
        return result


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def jail(workdir: Path) -> Iterator[tuple[JailProc, dict[str, str]]]:
    keystore, public = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "jail.sock", "--frame-timeout", "0.5")
    yield proc, public
    proc.stop()


@pytest.fixture
def good(jail: tuple[JailProc, dict[str, str]]) -> Iterator[RawClient]:
    """A well-behaved client connected before the misbehaving one and used after it."""
    client = RawClient(jail[0].socket_path)
    assert client.result("public_keys") == jail[1]
    yield client
    client.close()


def assert_still_served(good: RawClient, public: dict[str, str]) -> None:
    entry = hashlib.sha256(os.urandom(8)).digest()
    signature = good.result("sign", {"kind": "entry_hash", "data": b64e(entry)})["signature"]
    nacl.signing.VerifyKey(b64d(public["sign_key"])).verify(entry, b64d(signature))
    fresh = RawClient(good.sock.getpeername())
    assert fresh.result("public_keys") == public
    fresh.close()


# --- the socket ------------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory(jail: tuple[JailProc, dict[str, str]]) -> None:
    path = jail[0].socket_path
    assert stat.S_ISSOCK(path.lstat().st_mode)
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.lstat().st_mode) == 0o700


def test_serve_refuses_a_socket_directory_open_to_others(tmp_path: Path) -> None:
    directory = short_dir()
    try:
        keystore, _ = dev_keystore(directory)
        shared = directory / "shared"
        shared.mkdir()
        shared.chmod(0o755)
        result = run_jail_cli("serve", "--keystore", str(keystore),
                              "--socket", str(shared / "j.sock"))
        assert result.returncode == 1
        assert "chmod 700" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (shared / "j.sock").exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_serve_refuses_a_path_that_is_not_a_socket() -> None:
    directory = short_dir()
    try:
        keystore, _ = dev_keystore(directory)
        (directory / "s").mkdir(mode=0o700)
        target = directory / "s" / "j.sock"
        target.write_text("precious")
        result = run_jail_cli("serve", "--keystore", str(keystore), "--socket", str(target))
        assert result.returncode == 1
        assert "not a socket" in result.stderr
        assert target.read_text() == "precious"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_stale_socket_is_replaced_but_a_live_one_is_not(
    jail: tuple[JailProc, dict[str, str]], workdir: Path
) -> None:
    # A second jail on the live socket refuses and leaves the first one serving.
    result = run_jail_cli("serve", "--keystore", str(workdir / "keystore.json"),
                          "--socket", str(jail[0].socket_path))
    assert result.returncode == 1
    assert "in use" in result.stderr
    client = RawClient(jail[0].socket_path)
    assert client.result("public_keys") == jail[1]
    client.close()
    # A stale socket file (nobody listening) is removed and rebound.
    stale_dir = workdir / "t"
    stale_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(stale_dir / "j.sock"))
    stale.close()
    proc = spawn_jail(workdir / "keystore.json", stale_dir / "j.sock")
    try:
        client = RawClient(stale_dir / "j.sock")
        assert client.result("public_keys") == jail[1]
        client.close()
    finally:
        assert proc.stop() == 0
    assert not (stale_dir / "j.sock").exists()  # removed on a clean shutdown


# --- bad clients -----------------------------------------------------------------------------


def test_malformed_json_gets_an_error_and_keeps_the_connection(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    bad = RawClient(jail[0].socket_path)
    for body in (b"{nope", b"\xff\xfe\xfd", b"", b'{"id":1,"id":2}', b"[" * 50_000):
        bad.send_body(body)
        answer = bad.recv()
        assert answer == {"id": None, "ok": False,
                          "error": {"code": "malformed_frame", "detail": answer["error"]["detail"]}}
    assert bad.result("public_keys") == jail[1]  # same connection still works
    bad.close()
    assert_still_served(good, jail[1])


def test_bad_envelopes_and_unknown_ops_answer_with_their_id(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    bad = RawClient(jail[0].socket_path)
    answer = bad.call("become_root")
    assert answer["error"]["code"] == "unknown_op"
    bad.send_body(json.dumps({"id": 77, "op": "sign", "args": {"kind": "entry_hash"}}).encode())
    answer = bad.recv()
    assert answer is not None
    assert (answer["id"], answer["error"]["code"]) == (77, "bad_request")
    bad.send_body(b"[1, 2, 3]")
    answer = bad.recv()
    assert answer is not None
    assert (answer["id"], answer["error"]["code"]) == (None, "bad_request")
    bad.close()
    assert_still_served(good, jail[1])


def test_oversized_length_prefix_gets_an_error_then_close(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    bad = RawClient(jail[0].socket_path)
    bad.send_raw(struct.pack(">I", 4 * 1024 * 1024 + 1) + b"{}")
    answer = bad.recv()
    assert answer is not None
    assert answer["error"]["code"] == "frame_too_large"
    assert bad.recv() is None  # then the jail hangs up
    bad.close()
    assert_still_served(good, jail[1])


def test_random_bytes_are_answered_or_dropped(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    for seed in range(5):
        noise = hashlib.sha512(bytes([seed])).digest() * 4
        bad = RawClient(jail[0].socket_path)
        bad.send_raw(b"\xff" + noise)  # a length prefix far above 4 MiB
        answer = bad.recv()
        assert answer is not None and answer["ok"] is False
        assert bad.recv() is None
        bad.close()
    bad = RawClient(jail[0].socket_path)
    bad.send_body(os.urandom(1000))  # a sane length, random content: an error, connection kept
    answer = bad.recv()
    assert answer is not None and answer["error"]["code"] == "malformed_frame"
    assert bad.result("public_keys") == jail[1]
    bad.close()
    assert_still_served(good, jail[1])


def test_disconnect_mid_frame(jail: tuple[JailProc, dict[str, str]], good: RawClient) -> None:
    for partial in (b"\x00\x00", struct.pack(">I", 100) + b'{"id": 1, "op"'):
        bad = RawClient(jail[0].socket_path)
        bad.send_raw(partial)
        bad.close()
    assert_still_served(good, jail[1])
    assert jail[0].popen.poll() is None


def test_slow_loris_is_dropped_while_others_are_served(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    slow = RawClient(jail[0].socket_path)
    slow.send_raw(struct.pack(">I", 100) + b"{")
    assert_still_served(good, jail[1])  # served while the slow frame is pending
    started = time.monotonic()
    answer = slow.recv()  # the jail's frame timeout is 0.5 s in this module
    assert answer is not None and answer["ok"] is False
    assert slow.recv() is None
    assert time.monotonic() - started < 4
    slow.close()
    # An idle connection (no frame started) is not a slow loris: it keeps working.
    idle = RawClient(jail[0].socket_path)
    time.sleep(0.8)
    assert idle.result("public_keys") == jail[1]
    idle.close()


def test_many_concurrent_clients(jail: tuple[JailProc, dict[str, str]]) -> None:
    errors: list[BaseException] = []
    key = nacl.signing.VerifyKey(b64d(jail[1]["sign_key"]))

    def worker(n: int) -> None:
        try:
            client = RawClient(jail[0].socket_path)
            for i in range(20):
                entry = hashlib.sha256(f"{n}/{i}".encode()).digest()
                sig = client.result("sign", {"kind": "entry_hash", "data": b64e(entry)})
                key.verify(entry, b64d(sig["signature"]))
            hashes = b"".join(hashlib.sha256(f"{n}-{i}".encode()).digest() for i in range(200))
            sigs = b64d(client.result("sign_batch", {"kind": "entry_hash",
                                                     "data": b64e(hashes)})["signatures"])
            for i in range(200):
                key.verify(hashes[32 * i : 32 * i + 32], sigs[64 * i : 64 * i + 64])
            client.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


# --- two jails, one handshake ----------------------------------------------------------------


def test_kkpsk0_between_two_jail_processes(
    jail: tuple[JailProc, dict[str, str]], workdir: Path
) -> None:
    other_dir = workdir / "bob"
    other_dir.mkdir(mode=0o700)
    bob_keystore, bob_public = dev_keystore(other_dir)
    bob = spawn_jail(bob_keystore, other_dir / "s" / "jail.sock")
    alice_client, bob_client = RawClient(jail[0].socket_path), RawClient(bob.socket_path)
    try:
        alice_public = jail[1]
        m = mint(alice_public, bob_public)
        first = alice_client.result("noise_initiate", initiate_args(m, bob_public["box_key"]))
        second = bob_client.result(
            "noise_respond", respond_args(m, alice_public["box_key"], first["message"])
        )
        done = alice_client.result(
            "noise_finish", {"handle": first["handle"], "message": second["message"]}
        )
        assert done["send_key"] == second["recv_key"]
        assert done["recv_key"] == second["send_key"]
        assert done["handshake_hash"] == second["handshake_hash"]
        # A token from another grant fails the responder, cleanly.
        other = mint(alice_public, bob_public)
        first = alice_client.result("noise_initiate", initiate_args(m, bob_public["box_key"]))
        args = respond_args(m, alice_public["box_key"], first["message"])
        args["sealed_token"] = b64e(other.sealed_b)
        assert bob_client.call("noise_respond", args)["error"]["code"] == "handshake_failed"
    finally:
        alice_client.close()
        bob_client.close()
        bob.stop()


# --- peer credentials ------------------------------------------------------------------------

NOBODY = 65534


def _connect_as(uid: int, path: Path) -> str:
    """Fork a child that drops to ``uid``, sends a valid request; what happened to it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        outcome = b"error"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            client = RawClient(path)
            client.send_body(b'{"id": 1, "op": "public_keys", "args": {}}')
            answer = client.recv()
            outcome = b"closed" if answer is None else b"answered" if answer["ok"] else b"refused"
        except (BrokenPipeError, ConnectionResetError):
            outcome = b"closed"  # the jail hung up before our request was even written
        except OSError as exc:
            outcome = f"oserror {exc.errno}".encode()
        finally:
            os.write(write_end, outcome)
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
@pytest.mark.parametrize("allow_nobody", [False, True])
def test_peers_with_another_uid_are_closed(
    workdir: Path, allow_nobody: bool
) -> None:
    directory = workdir / f"uid{int(allow_nobody)}"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    extra = ("--allow-uid", str(NOBODY)) if allow_nobody else ()
    proc = spawn_jail(keystore, directory / "s" / "j.sock", *extra)
    try:
        # Test only: open the directory and socket to everyone so that only SO_PEERCRED stands.
        for opened in (workdir, directory):
            opened.chmod(0o755)
        (directory / "s").chmod(0o755)
        proc.socket_path.chmod(0o666)
        outcome = _connect_as(NOBODY, proc.socket_path)
        assert outcome == ("answered" if allow_nobody else "closed")
        root = RawClient(proc.socket_path)
        assert root.result("public_keys") == public
        root.close()
        if not allow_nobody:
            assert f"refused a connection from uid {NOBODY}" in proc.stderr()
    finally:
        workdir.chmod(0o700)
        with contextlib.suppress(OSError):
            proc.stop()


# --- idle and stalled clients cannot lock others out -----------------------------------------


def test_idle_clients_are_cut_off_and_cannot_lock_others_out(workdir: Path) -> None:
    directory = workdir / "idle"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    proc = spawn_jail(keystore, directory / "s" / "j.sock", "--idle-timeout", "1")
    hogs: list[RawClient] = []
    try:
        for _ in range(128):  # every slot the jail has, held by clients that say nothing
            hogs.append(RawClient(proc.socket_path))
        started = time.monotonic()
        for hog in hogs:  # all cut off between frames, without an answer
            assert hog.recv() is None
        assert time.monotonic() - started < 5
        newcomer = RawClient(proc.socket_path)
        assert newcomer.result("public_keys") == public
        newcomer.close()
        # A client that keeps talking is never cut off for being idle.
        busy = RawClient(proc.socket_path)
        for _ in range(4):
            assert busy.result("public_keys") == public
            time.sleep(0.4)
        busy.close()
    finally:
        for hog in hogs:
            hog.close()
        proc.stop()


def test_a_client_that_stops_reading_is_dropped_while_others_are_served(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    stalled = RawClient(jail[0].socket_path)
    request = json.dumps({"id": 1, "op": "sign_batch", "args": {
        "kind": "entry_hash", "data": b64e(bytes(32 * 20000))}}).encode()
    frame = struct.pack(">I", len(request)) + request
    stalled.sock.setblocking(False)
    sent = 0
    # Until its buffers are full, or the jail has already hung up on it.
    with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
        for _ in range(50):  # answers of 1.7 MB each that it never reads
            sent += stalled.sock.send(frame)
    assert_still_served(good, jail[1])
    time.sleep(1.5)  # frame timeout 0.5 s: its unread answer drops it
    assert_still_served(good, jail[1])
    stalled.close()
    assert jail[0].popen.poll() is None


def test_the_real_jail_refuses_a_stale_http_signature_base(
    jail: tuple[JailProc, dict[str, str]], good: RawClient
) -> None:
    from tests.crypto_jail.test_ops import HTTP_BASE  # created=1700000000

    stale = good.call("sign", {"kind": "http_signature_base", "data": b64e(HTTP_BASE)})
    assert stale["ok"] is False and stale["error"]["code"] == "refused"
    fresh = HTTP_BASE.replace(b"created=1700000000", b"created=%d" % int(time.time()))
    assert good.result("sign", {"kind": "http_signature_base", "data": b64e(fresh)})


def test_the_time_bounds_are_set_on_the_command_line(workdir: Path) -> None:
    from tests.crypto_jail.test_ops import HTTP_BASE, canonical_grant

    directory = workdir / "bounds"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    age = int(time.time()) - 1_700_000_000 + 3600
    proc = spawn_jail(keystore, directory / "s" / "j.sock", "--http-window", str(age),
                      "--grant-skew", str(age), "--grant-max-lifetime", "299")
    try:
        client = RawClient(proc.socket_path)
        assert client.result("sign", {"kind": "http_signature_base", "data": b64e(HTTP_BASE)})
        grant = canonical_grant("a" * 32, "b" * 32)  # issued 1700000000, lives 300 s
        answer = client.call("sign", {"kind": "grant", "data": b64e(grant)})
        assert answer["ok"] is False and "lifetime" in answer["error"]["detail"]
        client.close()
    finally:
        proc.stop()
    bad = run_jail_cli("serve", "--keystore", str(keystore), "--socket",
                       str(directory / "s" / "j.sock"), "--grant-skew", "0")
    assert bad.returncode == 1 and "positive" in bad.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_a_socket_group_lets_another_user_of_that_group_in(workdir: Path) -> None:
    """The systemd layout: RuntimeDirectory 0750 owned by the jail user and the node's group."""
    directory = workdir / "group"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    socket_dir = directory / "run"
    socket_dir.mkdir(mode=0o750)
    os.chown(socket_dir, -1, NOBODY)  # nogroup
    proc = spawn_jail(keystore, socket_dir / "j.sock", "--socket-group", "nogroup",
                      "--allow-user", "nobody")
    try:
        info = proc.socket_path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == NOBODY
        for opened in (workdir, directory):
            opened.chmod(0o711)  # test only: let nobody walk down to the socket directory
        assert _connect_as(NOBODY, proc.socket_path) == "answered"
    finally:
        workdir.chmod(0o700)
        directory.chmod(0o700)
        proc.stop()
    socket_dir.chmod(0o755)  # others may enter: refused even with a socket group
    result = run_jail_cli("serve", "--keystore", str(keystore), "--socket",
                          str(socket_dir / "j.sock"), "--socket-group", "nogroup")
    assert result.returncode == 1 and "0710 or 0750" in result.stderr


def test_a_newcomer_takes_the_slot_of_the_client_idle_longest(workdir: Path) -> None:
    directory = workdir / "evict"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    proc = spawn_jail(keystore, directory / "s" / "j.sock")  # the default 60 s idle timeout
    hogs: list[RawClient] = []
    try:
        for _ in range(128):
            hogs.append(RawClient(proc.socket_path))
        time.sleep(1.5)  # every hog now idles longer than the eviction threshold
        assert hogs[1].result("public_keys") == public  # but hogs[1] just talked
        newcomer = RawClient(proc.socket_path)
        assert newcomer.result("public_keys") == public  # admitted at once, not after 60 s
        # One idle hog lost its slot (hung up: readable at EOF); never hogs[1], which talked.
        readable, _, _ = select.select([h.sock for h in hogs], [], [], 3)
        assert len(readable) == 1 and readable[0] is not hogs[1].sock
        victim = next(h for h in hogs if h.sock is readable[0])
        assert victim.recv() is None
        assert hogs[1].result("public_keys") == public
        newcomer.close()
        assert "idle longest" in proc.stderr()
    finally:
        for hog in hogs:
            hog.close()
        proc.stop()



SECOND_SIGTERM = """
import os, signal, sys, threading
from pathlib import Path
from crypto_jail.server import JailServer, prepare_socket

restore = sys.argv[2] == "restore"
sock = prepare_socket(Path(sys.argv[1]))
server = JailServer(None, allowed_uids=frozenset({os.getuid()}), frame_timeout=1.0,
                    idle_timeout=1.0)
def stop_soon():
    os.kill(os.getpid(), signal.SIGTERM)
server.run(sock, on_ready=lambda: threading.Timer(0.1, stop_soon).start(),
           restore_signals=restore)
os.kill(os.getpid(), signal.SIGTERM)  # the second one, while cleaning up
signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a point where Python runs pending handlers
print("cleaned up", flush=True)
"""


@pytest.mark.parametrize("mode", ["keep", "restore"])
def test_a_second_sigterm_during_clean_up_does_not_kill_a_served_jail(
    workdir: Path, mode: str,
) -> None:
    # A supervised jail gets two SIGTERMs when its supervisor dies (PR_SET_PDEATHSIG and its
    # stdin watcher). ``crypto_jail serve`` keeps the stop handler installed after the serving
    # loop (restore_signals=False), so the second one cannot kill it before it has removed its
    # socket; restoring the default handler (the library default) would.
    sub = workdir / f"second-{mode}"
    sub.mkdir(mode=0o700)
    done = subprocess.run([PYTHON, "-c", SECOND_SIGTERM, str(sub / "j.sock"), mode],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    if mode == "keep":
        assert done.returncode == 0, done.stderr
        assert done.stdout == "cleaned up\n"
    else:
        assert done.returncode == -signal.SIGTERM
        assert done.stdout == ""

