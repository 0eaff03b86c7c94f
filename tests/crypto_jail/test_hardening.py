"""Process hardening: the same ``harden()`` the server calls, in a throwaway process; the real
``serve`` start-up path probed from inside once it is hardened (what it refuses); the order of
hardening and secret reads; the state of a real jail process seen from /proc. Also: the jail
imports only crypto libraries."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_jail.hardening import landlock_abi, seccomp_available
from crypto_jail.protocol import b64d, b64e
from tests.crypto_jail.test_server import (
    PYTHON,
    JailProc,
    RawClient,
    dev_keystore,
    short_dir,
    spawn_jail,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux hardening")
needs_seccomp = pytest.mark.skipif(not seccomp_available(), reason="libseccomp not installed")

PROBE = r"""
import json, os, resource, socket, sys
from crypto_jail import hardening
seccomp = sys.argv[1] == "1"
netns_before = os.readlink("/proc/self/ns/net")
isolated = hardening.harden(seccomp=seccomp).network_cut
out = {"isolated": isolated,
       "new_netns": os.readlink("/proc/self/ns/net") != netns_before,
       "dumpable": hardening.is_dumpable(),
       "core": resource.getrlimit(resource.RLIMIT_CORE)}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except PermissionError:
        out[name] = "denied"
    except OSError as exc:
        out[name] = f"oserror {exc.errno}"
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("inet6_udp", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
attempt("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
attempt("unix_pair", lambda: [s.close() for s in socket.socketpair(socket.AF_UNIX)])
attempt("uname", os.uname)  # outside the allowlist: the jail never asks
attempt("getcwd", os.getcwd)
if seccomp:  # without the filter, execv would succeed and replace this probe
    attempt("execv", lambda: os.execv("/bin/true", ["true"]))
attempt("connect", lambda: socket.socket(socket.AF_UNIX).connect("/nonexistent/socket"))
status = open("/proc/self/status").read()
out["status"] = {line.split(":")[0]: line.split(":")[1].strip()
                 for line in status.splitlines() if line.startswith(("NoNewPrivs", "Seccomp:"))}
print(json.dumps(out))
"""


def _probe(seccomp: bool) -> dict[str, object]:
    result = subprocess.run(
        [PYTHON, "-I", "-c", PROBE, "1" if seccomp else "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, object] = json.loads(result.stdout)
    return probe


@linux_only
@needs_seccomp
def test_harden_denies_new_sockets_exec_connect_and_what_is_not_allowed() -> None:
    out = _probe(seccomp=True)
    # The jail serves on the socket it bound before hardening: it creates none afterwards.
    for refused in ("inet", "inet6_udp", "netlink", "unix", "unix_pair", "execv", "connect",
                    "uname", "getcwd"):
        assert out[refused] == "denied", (refused, out)
    assert out["isolated"] is True and out["new_netns"] is False
    assert out["dumpable"] is False
    assert out["core"] == [0, 0]
    assert out["status"] == {"NoNewPrivs": "1", "Seccomp": "2"}


@linux_only
def test_without_seccomp_the_other_steps_still_apply() -> None:
    out = _probe(seccomp=False)
    assert out["uname"] == "allowed" and out["unix"] == "allowed"
    assert out["inet"] == "allowed"  # this is what the seccomp filter takes away...
    if os.geteuid() == 0:  # ...and what an empty network namespace makes useless instead
        assert out["isolated"] is True and out["new_netns"] is True
    assert out["dumpable"] is False
    assert out["core"] == [0, 0]
    assert out["status"] == {"NoNewPrivs": "1", "Seccomp": "0"}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _proc_status(proc: JailProc) -> dict[str, str]:
    text = Path(f"/proc/{proc.pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def _core_limit(proc: JailProc) -> str:
    for line in Path(f"/proc/{proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError("no core limit line")


@linux_only
@needs_seccomp
def test_the_running_jail_is_hardened(workdir: Path) -> None:
    keystore, public = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock")
    try:
        status = _proc_status(proc)
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert _core_limit(proc) == "0 0"
        client = RawClient(proc.socket_path)  # and it still serves
        assert client.result("public_keys") == public
        client.close()
    finally:
        proc.stop()


@linux_only
def test_no_seccomp_flag_warns_and_skips_only_seccomp(workdir: Path) -> None:
    keystore = workdir / "keystore.json"
    if not keystore.exists():
        keystore, _ = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "n.sock", "--no-seccomp")
    try:
        status = _proc_status(proc)
        assert status["Seccomp"] == "0"
        assert status["NoNewPrivs"] == "1"
        assert "--no-seccomp" in proc.stderr()
        own_netns = os.readlink("/proc/self/ns/net")
        jail_netns = os.readlink(f"/proc/{proc.pid}/ns/net")
        if os.geteuid() == 0:  # root may create a network namespace: the fallback isolation
            assert jail_netns != own_netns
            assert "network namespace" in proc.stderr()
        else:
            assert "NOT restricted" in proc.stderr() or jail_netns != own_netns
        client = RawClient(proc.socket_path)  # the filesystem socket still reaches it
        assert client.result("public_keys")["node_id"]
        client.close()
    finally:
        proc.stop()


def test_jail_imports_only_the_standard_library_and_crypto_libraries() -> None:
    code = (
        "import sys, crypto_jail.server, crypto_jail.ops, crypto_jail.hardening, "
        "crypto_jail.__main__; print('\\n'.join(sorted(sys.modules)))"
    )
    result = subprocess.run([PYTHON, "-I", "-c", code], capture_output=True, text=True,
                            timeout=30, check=True)
    top = {name.split(".")[0] for name in result.stdout.split()}
    assert "crypto_jail" in top
    for forbidden in ("openred", "quart", "aiohttp", "sqlalchemy", "sqlmodel", "httpx",
                      "hypercorn", "click", "rich", "audit_tools"):
        assert forbidden not in top
    # Site hooks from .pth files (editable install finder, setuptools' distutils shim) load
    # in every interpreter; everything else must be the standard library or crypto.
    site_hooks = {"__main__", "_distutils_hack"}
    third_party = {
        name for name in top - set(sys.stdlib_module_names) - site_hooks - {"crypto_jail"}
        if not name.startswith("__editable__")
    }
    assert third_party <= {"nacl", "cryptography", "cffi", "_cffi_backend", "_openssl",
                           "_sodium", "pyseccomp"}, third_party


# --- the real serve path, probed from inside once hardened -----------------------------------

SERVE_PROBE = r"""
import ctypes, errno, fcntl, json, os, socket, subprocess, sys, termios, threading
from crypto_jail import __main__ as jail_main, hardening, server

a, b = socket.socketpair()  # before hardening: a connected pair, as an accepted client is

def probe(self, sock, *, on_ready, **_):
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    def attempt(name, fn):
        try:
            result = fn()
            out[name] = "allowed" if result is None or result >= 0 else (
                "denied" if ctypes.get_errno() in (errno.EPERM, errno.EACCES) else
                f"oserror {ctypes.get_errno()}")
        except PermissionError:
            out[name] = "denied"
        except OSError as exc:
            out[name] = f"oserror {exc.errno}"
    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    def thread():
        box = []
        t = threading.Thread(target=lambda: box.append(1))
        t.start(); t.join()
        assert box == [1]
    attempt("thread", thread)
    attempt("fork", fork)
    attempt("subprocess", lambda: subprocess.run(["/bin/true"], check=False) and None)
    attempt("exec", lambda: os.execv("/bin/true", ["true"]))
    attempt("unshare", lambda: libc.unshare(0x04000000))  # CLONE_NEWUTS
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    attempt("setns", lambda: libc.setns(fd, 0))
    attempt("memfd", lambda: os.close(os.memfd_create("x")))
    attempt("dumpable_again", lambda: libc.prctl(4, 1, 0, 0, 0))
    import resource
    limit = (ctypes.c_ulong * 2)(4096, 4096)  # struct rlimit; root could raise it otherwise
    attempt("core_again", lambda: libc.setrlimit(resource.RLIMIT_CORE, ctypes.byref(limit)))
    attempt("read_limits", lambda: resource.getrlimit(resource.RLIMIT_CORE) and None)
    attempt("clone_newnet_thread", lambda: libc.syscall(56, 0x40000000 | 0x00010000 | 0x00000800
                                                        | 0x00000100, 0, 0, 0, 0))
    attempt("signal_outside", lambda: os.kill(int(sys.argv[3]), 0))
    attempt("inet", lambda: socket.socket(socket.AF_INET).close())
    attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
    attempt("unix_dgram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
    attempt("unix_dgram_pair",
            lambda: [s.close() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)])
    attempt("unix_seqpacket",
            lambda: socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).close())
    attempt("send", lambda: a.send(b"x") and None)
    attempt("recv", lambda: b.recv(1) and None)
    attempt("sendto_address", lambda: a.sendto(b"x", "/nonexistent") and None)
    attempt("sendmsg", lambda: a.sendmsg([b"x"]) and None)
    keystore_dir, outside = sys.argv[1], sys.argv[2]
    def write(path):
        with open(path, "w") as handle:
            handle.write("x")
    attempt("write_keystore_dir", lambda: write(os.path.join(keystore_dir, "probe.txt")))
    attempt("write_outside", lambda: write(os.path.join(outside, "probe.txt")))
    attempt("mkdir_outside", lambda: os.mkdir(os.path.join(outside, "probe.d")))
    attempt("read_outside", lambda: open("/proc/self/status").close())
    # Outside the allowlist, harmless, and never made by the jail: refused too.
    attempt("uname", os.uname)
    attempt("getcwd", os.getcwd)
    attempt("chroot", lambda: os.chroot("/"))
    attempt("mknod_keystore_dir", lambda: os.mkfifo(os.path.join(keystore_dir, "probe.fifo")))
    attempt("chmod_keystore_dir", lambda: os.chmod(os.path.join(keystore_dir, "probe.txt"), 0o600))
    lower = (ctypes.c_ulong * 2)(64, 64)  # lowering a limit is harmless, yet not needed
    attempt("lower_nofile", lambda: libc.setrlimit(resource.RLIMIT_NOFILE, ctypes.byref(lower)))
    attempt("ioctl_fionread", lambda: fcntl.ioctl(a.fileno(), termios.FIONREAD, b"\0" * 4) and None)
    attempt("is_a_tty", lambda: os.isatty(a.fileno()) and None)  # ioctl(TCGETS) is allowed
    attempt("signal_self", lambda: os.kill(os.getpid(), 0))
    out["dumpable"] = hardening.is_dumpable()
    print(json.dumps(out), flush=True)

server.JailServer.run = probe
sys.exit(jail_main.main(["serve", "--keystore", os.path.join(sys.argv[1], "keystore.json"),
                         "--socket", os.path.join(sys.argv[1], "s", "j.sock")]))
"""


@linux_only
@needs_seccomp
def test_the_hardened_jail_refuses_processes_namespaces_memfd_dumping_and_writes() -> None:
    directory, outside = short_dir(), short_dir()
    try:
        dev_keystore(directory)
        result = subprocess.run([PYTHON, "-I", "-c", SERVE_PROBE, str(directory), str(outside),
                                 str(os.getpid())],
                                capture_output=True, text=True, timeout=60, check=False,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.splitlines()[-1])
        assert out["thread"] == "allowed"  # the jail serves each client on a thread
        for refused in ("fork", "subprocess", "exec", "unshare", "setns", "memfd",
                        "dumpable_again", "core_again", "clone_newnet_thread", "inet",
                        "unix_dgram", "unix_dgram_pair", "unix_seqpacket", "sendto_address",
                        "sendmsg", "unix", "uname", "getcwd", "chroot", "mknod_keystore_dir",
                        "chmod_keystore_dir", "lower_nofile", "ioctl_fionread",
                        "signal_outside"):
            assert out[refused] == "denied", (refused, out)
        assert out["dumpable"] is False
        for allowed in ("send", "recv", "read_outside", "read_limits", "is_a_tty",
                        "signal_self"):
            assert out[allowed] == "allowed", (allowed, out)
        if landlock_abi() is None:  # skip the write checks cleanly, as the jail does
            assert "Landlock is not available" in result.stderr
        else:
            assert "Landlock ABI" in result.stderr
            assert out["write_keystore_dir"] == "allowed"
            assert out["write_outside"] == "denied" and out["mkdir_outside"] == "denied"
            assert list(outside.iterdir()) == []
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)


@linux_only
@needs_seccomp
def test_the_real_jail_still_signs_batches_on_two_threads_when_hardened(workdir: Path) -> None:
    keystore = workdir / "keystore.json"
    if not keystore.exists():
        keystore, _ = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "t.sock")
    try:
        client = RawClient(proc.socket_path)
        hashes = b"".join(bytes([i]) * 32 for i in range(200))  # above the split threshold
        signatures = client.result("sign_batch", {"kind": "entry_hash", "data": b64e(hashes)})
        assert len(b64d(signatures["signatures"])) == 64 * 200
        client.close()
        assert int(_proc_status(proc)["Threads"]) >= 2
    finally:
        proc.stop()


# --- hardened before any secret is read ------------------------------------------------------

ORDER_PROBE = r"""
import json, resource, sys
from crypto_jail import __main__ as jail_main, hardening

seen = []
def observe(what):
    seen.append({"what": what, "dumpable": hardening.is_dumpable(),
                 "core": list(resource.getrlimit(resource.RLIMIT_CORE))})

real_read, real_load = jail_main.read_passphrase, jail_main.load_keystore
def read_passphrase(*args, **kwargs):
    observe("passphrase")
    return real_read(*args, **kwargs)
def load_keystore(*args, **kwargs):
    observe("keystore")
    print(json.dumps(seen), flush=True)
    raise SystemExit(0)
jail_main.read_passphrase, jail_main.load_keystore = read_passphrase, load_keystore
jail_main.main(sys.argv[1:])
"""


@linux_only
@pytest.mark.parametrize("command", ["serve", "init"])
def test_the_process_is_hardened_before_it_reads_the_passphrase_or_keystore(
    workdir: Path, command: str
) -> None:
    passphrase = workdir / "order-pass"
    passphrase.write_text("a passphrase long enough\n")
    args = [command, "--keystore", str(workdir / "order.json"), "--passphrase-file",
            str(passphrase)]
    if command == "serve":
        args += ["--socket", str(workdir / "s" / "o.sock")]
    result = subprocess.run([PYTHON, "-I", "-c", ORDER_PROBE, *args], capture_output=True,
                            text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    seen = json.loads(result.stdout.splitlines()[0]) if command == "serve" else None
    if command == "init":  # init reads the passphrase, then creates (not loads) the keystore
        assert "Traceback" not in result.stderr, result.stderr
        return _check_init_order(workdir)
    assert seen is not None and [s["what"] for s in seen] == ["passphrase", "keystore"]
    for step in seen:
        assert step["dumpable"] is False and step["core"] == [0, 0], step


def _check_init_order(workdir: Path) -> None:
    code = ORDER_PROBE.replace("jail_main.load_keystore", "jail_main.create_keystore")
    passphrase = workdir / "order-pass"
    target = workdir / "order-init.json"
    result = subprocess.run(
        [PYTHON, "-I", "-c", code, "init", "--keystore", str(target), "--passphrase-file",
         str(passphrase)], capture_output=True, text=True, timeout=30, check=False,
        stdin=subprocess.DEVNULL)
    seen = json.loads(result.stdout.splitlines()[0])
    assert [s["what"] for s in seen] == ["passphrase", "keystore"]
    for step in seen:
        assert step["dumpable"] is False and step["core"] == [0, 0], step
    assert not target.exists()


@linux_only
def test_a_jail_waiting_for_its_passphrase_is_already_hardened(workdir: Path) -> None:
    """Seen from outside: the real process, blocked opening its passphrase FIFO."""
    keystore = workdir / "keystore.json"
    if not keystore.exists():
        keystore, _ = dev_keystore(workdir)
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard != resource.RLIM_INFINITY and hard < 1 << 20 and os.geteuid() != 0:
        pytest.skip("cannot give the jail a core limit to take away")

    def allow_cores() -> None:  # so that a limit of 0 in the jail is the jail's own doing
        resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, max(hard, 1 << 20)
                                                  if hard != resource.RLIM_INFINITY else hard))

    fifo = workdir / "pass.fifo"
    os.mkfifo(fifo, 0o600)
    popen = subprocess.Popen(  # preexec_fn only sets a resource limit
        [PYTHON, "-I", "-m", "crypto_jail", "serve", "--keystore", str(keystore),
         "--socket", str(workdir / "s" / "f.sock"), "--passphrase-file", str(fifo)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=allow_cores)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until it blocks in open(fifo)
            wchan = Path(f"/proc/{popen.pid}/wchan").read_text()
            if "partner" in wchan or "fifo" in wchan:  # blocked opening the FIFO
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the jail never waited for its passphrase")
        proc = JailProc(popen, workdir / "s" / "f.sock", workdir / "none")
        assert _core_limit(proc) == "0 0"
    finally:
        popen.kill()
        popen.wait(5)
        fifo.unlink()


NO_LANDLOCK_PROBE = r"""
import sys
from crypto_jail import __main__ as jail_main, hardening, server

hardening.landlock_abi = lambda: None  # a kernel without Landlock
server.JailServer.run = lambda self, sock, *, on_ready, **_: print("served", flush=True)
sys.exit(jail_main.main(["serve", "--keystore", sys.argv[1], "--socket", sys.argv[2]]))
"""


@linux_only
@needs_seccomp
def test_without_landlock_the_jail_says_so_and_still_serves(workdir: Path) -> None:
    keystore = workdir / "keystore.json"
    if not keystore.exists():
        keystore, _ = dev_keystore(workdir)
    result = subprocess.run(
        [PYTHON, "-I", "-c", NO_LANDLOCK_PROBE, str(keystore), str(workdir / "s" / "l.sock")],
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "served\n"
    assert "Landlock is not available here: file writes are NOT confined" in result.stderr


@linux_only
@needs_seccomp
@pytest.mark.skipif(platform.machine() != "x86_64", reason="names checked on x86-64")
def test_every_allowlisted_name_is_a_syscall_libseccomp_knows() -> None:
    """A misspelt name would be skipped silently (as names other architectures lack are)."""
    import pyseccomp

    from crypto_jail.hardening import _ALLOWED

    unknown = [name for name in _ALLOWED
               if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) < 0]
    assert unknown == []
