"""Process hardening for the jail: no core dumps, no ptrace-style reads, no network, no exec.

Applied by the server after every import and after the listening socket is bound, before the
first request is read (DESIGN §7):

1. ``prctl(PR_SET_DUMPABLE, 0)`` — no core dumps and no same-uid ``ptrace``/``/proc/<pid>/mem``;
2. ``RLIMIT_CORE = 0`` — belt and braces for core files;
3. ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` — needed to load a seccomp filter unprivileged, and
   stops set-uid escalation;
4. a seccomp-bpf filter (libseccomp via pyseccomp), default ALLOW, that fails with EPERM:
   ``socket``/``socketpair`` for any family but AF_UNIX, ``connect``, ``execve``/``execveat``,
   ``ptrace``, ``process_vm_readv``/``writev`` and io_uring (whose socket and connect operations
   would bypass the syscall rules). Syscalls of other ABIs (e.g. i386 on x86-64) kill the
   process, libseccomp's default for foreign architectures.

Where seccomp is unavailable (``seccomp=False``), step 4 is replaced by a fresh, empty network
namespace (``unshare(CLONE_NEWNET)``) when the process may create one; the bound Unix socket
lives in the filesystem, so clients still reach it. A user namespace is deliberately not used:
it would remap peer uids and defeat the SO_PEERCRED check.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import resource
import socket
import sys
from typing import Any

from crypto_jail.errors import JailFailure

__all__ = ["HardeningError", "harden", "is_dumpable", "isolate_network", "seccomp_available"]

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
CLONE_NEWNET = 0x40000000

_DENIED_ALWAYS = ("connect", "execve", "execveat", "ptrace", "process_vm_readv",
                  "process_vm_writev")
_DENIED_IF_KNOWN = ("io_uring_setup", "io_uring_enter", "io_uring_register")


class HardeningError(JailFailure):
    """The process could not be hardened as asked (the jail refuses to serve)."""


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, arg: int) -> int:
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    result: int = libc.prctl(option, arg, 0, 0, 0)
    if result < 0:
        err = ctypes.get_errno()
        raise HardeningError(f"prctl({option}) failed: {errno.errorcode.get(err, err)}")
    return result


def is_dumpable() -> bool:
    """Whether this process may dump core / be read by same-uid tracers."""
    return _prctl(PR_GET_DUMPABLE, 0) != 0


def seccomp_available() -> bool:
    """Whether libseccomp and pyseccomp can be loaded on this platform."""
    if not sys.platform.startswith("linux") or ctypes.util.find_library("seccomp") is None:
        return False
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _install_seccomp() -> None:
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:
        raise HardeningError("seccomp is unavailable (libseccomp or pyseccomp missing)") from exc
    deny = sc.ERRNO(errno.EPERM)
    try:
        filt = sc.SyscallFilter(sc.ALLOW)
        # socket(2)/socketpair(2): arg 0 is the address family; only AF_UNIX may be created.
        filt.add_rule(deny, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        filt.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
        for name in _DENIED_ALWAYS:
            filt.add_rule(deny, name)
        for name in _DENIED_IF_KNOWN:
            try:
                filt.add_rule(deny, name)
            except (OSError, ValueError, RuntimeError):  # an old libseccomp without io_uring
                continue
        filt.load()
    except OSError as exc:
        raise HardeningError(f"could not load the seccomp filter: {exc}") from exc


def isolate_network() -> bool:
    """Move this (single-threaded) process into a new, empty network namespace if allowed."""
    if not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    libc.unshare.argtypes = [ctypes.c_int]
    libc.unshare.restype = ctypes.c_int
    return bool(libc.unshare(CLONE_NEWNET) == 0)


def harden(*, seccomp: bool = True) -> bool:
    """Apply steps 1-4 of the module docstring to this process (irreversible).

    ``seccomp=False`` (platforms without libseccomp) replaces step 4 by a network namespace
    where possible. Returns whether network access is cut off (by seccomp or the namespace);
    the caller warns when it is not.
    """
    _prctl(PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        _install_seccomp()
        return True
    return isolate_network()
