"""Process hardening: the same ``harden()`` the server calls, in a throwaway process, and the
state of a real jail process seen from /proc. Also: the jail imports only crypto libraries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_jail.hardening import seccomp_available
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
isolated = hardening.harden(seccomp=seccomp)
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
def test_harden_denies_network_exec_and_connect_but_not_unix_sockets() -> None:
    out = _probe(seccomp=True)
    assert out["inet"] == "denied"
    assert out["inet6_udp"] == "denied"
    assert out["netlink"] == "denied"
    assert out["execv"] == "denied"
    assert out["connect"] == "denied"
    assert out["unix"] == "allowed"
    assert out["unix_pair"] == "allowed"
    assert out["isolated"] is True and out["new_netns"] is False
    assert out["dumpable"] is False
    assert out["core"] == [0, 0]
    assert out["status"] == {"NoNewPrivs": "1", "Seccomp": "2"}


@linux_only
def test_without_seccomp_the_other_steps_still_apply() -> None:
    out = _probe(seccomp=False)
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
