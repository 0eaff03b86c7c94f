"""Process hardening for the jail: no core dumps, no ptrace-style reads, no network, no exec.

Two stages (DESIGN §7). :func:`harden_early` runs first thing, before any passphrase or
keystore byte is read:

1. ``prctl(PR_SET_DUMPABLE, 0)`` — no core dumps and no same-uid ``ptrace``/``/proc/<pid>/mem``;
2. ``RLIMIT_CORE = 0`` — belt and braces for core files.

:func:`harden` runs after every import and after the listening socket is bound, before the
first request is read, while the process is still single-threaded:

3. ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` — needed for Landlock and seccomp unprivileged, and stops
   set-uid escalation;
4. Landlock (where the kernel offers it): file creation, writing, truncation, removal and
   renaming are allowed only beneath the given directories (the keystore's and the socket's);
   executing files is allowed nowhere; from ABI 4, TCP bind/connect neither, and from ABI 6
   the jail can neither signal processes outside it nor reach abstract Unix sockets. Without
   Landlock the jail logs that file writes are not confined, and goes on;
5. a seccomp-bpf filter (libseccomp via pyseccomp), an allowlist: every syscall not allowed
   fails with EPERM. Allowed (:data:`_ALLOWED`, grouped by what the jail does with them, found
   by tracing real jails): memory management, threads and futexes, signal handling, clocks,
   identity queries, file reads (CPython imports lazily; Landlock, not seccomp, confines
   writes), ``pipe2``, ``unlink`` (the socket at shutdown), ``getrandom``, and serving on the
   socket bound before hardening (``accept4``, ``recvfrom``, ``shutdown``, socket options,
   ``select``/``poll`` variants). Allowed only with safe arguments: ``clone`` with
   ``CLONE_THREAD`` and no ``CLONE_NEW*`` flag (threads, never processes or namespaces;
   ``clone3``, whose flags seccomp cannot read, fails with ENOSYS so the C library falls back
   to ``clone``); ``sendto`` without an address (``send``); ``kill``/``tgkill`` of the jail
   itself; ``prctl`` only to read the dumpable and no-new-privs flags or get/set a thread
   name; ``prlimit64`` only to read a limit (so ``RLIMIT_CORE`` stays 0: with
   ``fs.suid_dumpable=2`` a non-dumpable process may still dump core); ``ioctl`` only
   ``TCGETS`` (isatty), ``FIONBIO``, ``FIOCLEX``/``FIONCLEX``. Everything else is refused,
   among it: creating any socket, ``connect``, ``bind``, ``sendmsg``; ``execve``/``execveat``;
   ``fork``/``vfork``; ``unshare``/``setns``; ``memfd_create``; ``prctl(PR_SET_DUMPABLE)``,
   ``prctl(PR_SET_MM)``, ``setrlimit``; ``ptrace``, ``process_vm_*``, io_uring, ``bpf``,
   mounts, ``chmod``, ``mknod``, ``uname``. Syscalls of other ABIs (e.g. i386 on x86-64) kill
   the process, libseccomp's default for foreign architectures.

Where seccomp is unavailable (``seccomp=False``), step 5 is replaced by a fresh, empty network
namespace (``unshare(CLONE_NEWNET)``) when the process may create one; the bound Unix socket
lives in the filesystem, so clients still reach it. A user namespace is deliberately not used:
it would remap peer uids and defeat the SO_PEERCRED check.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import operator
import os
import platform
import resource
import signal
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto_jail.errors import JailFailure

__all__ = [
    "Hardened",
    "HardeningError",
    "confine_writes",
    "harden",
    "harden_early",
    "is_dumpable",
    "isolate_network",
    "landlock_abi",
    "seccomp_available",
]

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_MM = 35
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (linux/sched.h)
_CLONE_NEW = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
              CLONE_NEWNET)

_SOCK_TYPE_MASK = 0xF
_PR_SET_NAME, _PR_GET_NAME = 15, 16
_TCGETS, _FIONBIO, _FIONCLEX, _FIOCLEX = 0x5401, 0x5421, 0x5450, 0x5451

# The allowlist (every other syscall fails with EPERM), by what the jail does with it once
# hardened. Where a C library or CPython picks one of several syscalls for one function
# (select/pselect6, open/openat, stat/newfstatat/statx, ...), all of them are listed, so that
# another libc build keeps working. Names an architecture lacks are skipped.
_ALLOWED = (
    # memory: the allocator, thread stacks, CPython's arenas, lazily loaded extension modules
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    # threads (clone itself is below, with its flags checked) and their synchronisation
    "futex", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "gettid",
    "sched_yield", "sched_getaffinity", "exit", "exit_group", "restart_syscall",
    # signals: SIGTERM/SIGINT handlers, the wakeup pipe, thread signal masks
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    # clocks and timeouts (normally the vDSO; syscalls where it is missing)
    "clock_gettime", "clock_getres", "gettimeofday", "time", "clock_nanosleep", "nanosleep",
    # who am I (CPython and libraries ask; nothing to change)
    "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    # files: reads anywhere (CPython imports lazily), writes only where Landlock allows;
    # the socket file is removed at shutdown; os.pipe for the server's wakeup pipe
    "read", "pread64", "readv", "write", "writev", "close", "openat", "open", "lseek",
    "fstat", "newfstatat", "stat", "lstat", "statx", "getdents64", "readlink", "readlinkat",
    "access", "faccessat", "faccessat2", "fcntl", "dup", "dup3", "pipe2", "unlink",
    "unlinkat",
    # the checkpoint witness file (crypto_jail/witness.py), opened before hardening: made durable
    "fsync", "fdatasync",
    # randomness for the crypto libraries (libsodium, OpenSSL, os.urandom)
    "getrandom",
    # serving clients on the listening socket bound before hardening
    "accept4", "accept", "recvfrom", "recvmsg", "shutdown", "getsockopt", "setsockopt",
    "getsockname", "getpeername", "select", "pselect6", "poll", "ppoll",
)

# Landlock (linux/landlock.h). The three syscalls have the same numbers on every architecture
# that has them (they were added after the syscall tables were unified).
_LANDLOCK_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE = (
    (1 << 1)  # WRITE_FILE
    | (1 << 4) | (1 << 5)  # REMOVE_DIR, REMOVE_FILE
    | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)  # MAKE_*
)
_FS_REFER = 1 << 13  # ABI 2: rename/link across directories
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_TCP = (1 << 0) | (1 << 1)  # ABI 4: BIND_TCP, CONNECT_TCP
_SCOPES = (1 << 0) | (1 << 1)  # ABI 6: SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL
_PATH_BENEATH = struct.Struct("=Qi")  # struct landlock_path_beneath_attr is packed


class HardeningError(JailFailure):
    """The process could not be hardened as asked (the jail refuses to serve)."""


@dataclass(frozen=True, slots=True)
class Hardened:
    """What :func:`harden` achieved: whether network access is cut off, and Landlock's ABI
    version confining file writes (None where the kernel does not offer Landlock)."""

    network_cut: bool
    landlock_abi: int | None


@functools.cache
def _libc() -> Any:
    # Cached: find_library runs helper programs, which the finished jail may no longer run.
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


def _load_pyseccomp() -> Any:
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:
        raise HardeningError("seccomp is unavailable (libseccomp or pyseccomp missing)") from exc
    return sc


def _add_rules(filt: Any, action: Any, name: str, *conditions: Any) -> None:
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # not on this architecture
        filt.add_rule(action, name, *conditions)


def _install_seccomp() -> None:
    sc = _load_pyseccomp()
    allow = sc.ALLOW
    me = os.getpid()
    try:
        filt = sc.SyscallFilter(sc.ERRNO(errno.EPERM))
        # A binary tree of syscall numbers instead of a linear chain: every recv/send of the
        # jail must not walk through all the rules.
        with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
            filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
        for name in _ALLOWED:
            _add_rules(filt, allow, name)
        # clone(2): threads only: CLONE_THREAD set and no CLONE_NEW* flag (arg 0 is the flags
        # on x86-64 and arm64). clone3(2) passes its flags in memory seccomp cannot read:
        # ENOSYS makes glibc's pthread_create fall back to clone(2).
        new_namespaces = functools.reduce(operator.or_, _CLONE_NEW)
        _add_rules(filt, allow, "clone",
                   sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD | new_namespaces, CLONE_THREAD))
        _add_rules(filt, sc.ERRNO(errno.ENOSYS), "clone3")
        # send(2) is sendto(2) with no address; an address means talking to someone else.
        _add_rules(filt, allow, "sendto", sc.Arg(4, sc.EQ, 0))
        # Signals only to itself (the stdin watcher stops the jail with SIGTERM; raise()).
        _add_rules(filt, allow, "kill", sc.Arg(0, sc.EQ, me))
        _add_rules(filt, allow, "tgkill", sc.Arg(0, sc.EQ, me))
        # prctl(2): reading state and thread names; never PR_SET_DUMPABLE or PR_SET_MM.
        for option in (PR_GET_DUMPABLE, _PR_SET_NAME, _PR_GET_NAME, PR_GET_NO_NEW_PRIVS):
            _add_rules(filt, allow, "prctl", sc.Arg(0, sc.EQ, option))
        # Reading resource limits (prlimit64 with new_limit NULL); setting none, so RLIMIT_CORE
        # stays 0 (with fs.suid_dumpable=2 a non-dumpable process may still dump core).
        _add_rules(filt, allow, "prlimit64", sc.Arg(2, sc.EQ, 0))
        _add_rules(filt, allow, "getrlimit")
        # ioctl(2): isatty() and (non-)blocking/close-on-exec flags only; never TIOCSTI & co.
        for request in (_TCGETS, _FIONBIO, _FIONCLEX, _FIOCLEX):
            _add_rules(filt, allow, "ioctl", sc.Arg(1, sc.EQ, request))
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


def _landlock_syscall(number: int, *args: Any) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    result: int = libc.syscall(ctypes.c_long(number), *args)
    return result


def landlock_abi() -> int | None:
    """The kernel's Landlock ABI version, or None where Landlock is not offered."""
    numbers = _LANDLOCK_SYSCALLS.get(platform.machine())
    if not sys.platform.startswith("linux") or numbers is None:
        return None
    version = _landlock_syscall(numbers[0], None, ctypes.c_size_t(0),
                                ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return version if version > 0 else None


def confine_writes(writable: Sequence[Path]) -> int | None:
    """Step 4: allow file writes only beneath ``writable`` (Landlock); its ABI, or None.

    Needs ``PR_SET_NO_NEW_PRIVS`` first (or CAP_SYS_ADMIN). Irreversible for this process and
    every thread it creates later.
    """
    abi = landlock_abi()
    if abi is None:
        return None
    create, add_rule, restrict = _LANDLOCK_SYSCALLS[platform.machine()]
    write = _FS_WRITE | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    fields = [write | _FS_EXECUTE] + ([_NET_TCP] if abi >= 4 else []) + (
        [_SCOPES] if abi >= 6 else [])
    attr = struct.pack(f"={len(fields)}Q", *fields)  # struct landlock_ruleset_attr, prefix
    ruleset = _landlock_syscall(create, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)),
                                ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise HardeningError(f"landlock_create_ruleset failed: {errno.errorcode.get(err, err)}")
    try:
        for directory in writable:
            dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                rule = _PATH_BENEATH.pack(write, dir_fd)
                if _landlock_syscall(add_rule, ctypes.c_int(ruleset),
                                     ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                                     ctypes.c_char_p(rule), ctypes.c_uint32(0)) < 0:
                    err = ctypes.get_errno()
                    raise HardeningError(f"landlock_add_rule({directory}) failed: "
                                         f"{errno.errorcode.get(err, err)}")
            finally:
                os.close(dir_fd)
        if _landlock_syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            err = ctypes.get_errno()
            raise HardeningError(f"landlock_restrict_self failed: {errno.errorcode.get(err, err)}")
    finally:
        os.close(ruleset)
    return abi


PR_SET_PDEATHSIG = 1


def exit_with_parent(supervisor: int | None = None) -> bool:
    """Get SIGTERM when the process (thread) that started this one ends, even by SIGKILL.

    For a supervised jail (``--exit-on-stdin-eof``), beside the stdin watcher: stdin reaches
    EOF only when every copy of the pipe's write end is closed, which a process forked from
    the supervisor could keep open. Set before seccomp, which allows no such ``prctl``.

    The signal comes only for a parent that dies after it is asked for: one that died while
    this process started (Python's start and imports come first) sends none. So when the
    supervisor's pid is known, False says that process is no longer among this one's
    ancestors (the caller then stops), checked after the ``prctl`` so no death falls between
    the two. An ancestor, not only the parent: ``OPENRED_JAIL_PYTHON`` may be a wrapper that
    runs Python as its child, and a dead supervisor's children are reparented at once (even
    while it is a zombie nobody reaped), so it is never found above a jail it left behind.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return supervisor is None or supervisor in _ancestors()


_MAX_ANCESTORS = 32


def _ancestors() -> list[int]:
    """This process's parent, its parent's parent, ... (``/proc``; only the parent without)."""
    found = [os.getppid()]
    while found[-1] > 1 and len(found) < _MAX_ANCESTORS:
        try:
            stat = Path(f"/proc/{found[-1]}/stat").read_bytes()
            parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break  # gone meanwhile, or no /proc: what was found is what is known
        found.append(parent)
    return found


def harden_early() -> None:
    """Steps 1-2 of the module docstring: before any secret is read (irreversible)."""
    _prctl(PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def harden(*, seccomp: bool = True, writable: Sequence[Path] = ()) -> Hardened:
    """Apply steps 1-5 of the module docstring to this process (irreversible).

    ``writable`` are the directories file writes stay possible beneath (Landlock, where the
    kernel offers it). ``seccomp=False`` (platforms without libseccomp) replaces step 5 by a
    network namespace where possible. The caller warns about what :class:`Hardened` says is
    missing.
    """
    harden_early()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if seccomp:
        _load_pyseccomp()  # loading it looks for libseccomp with helpers that write temp files
    abi = confine_writes(writable)
    if seccomp:
        _install_seccomp()
        return Hardened(True, abi)
    return Hardened(isolate_network(), abi)
