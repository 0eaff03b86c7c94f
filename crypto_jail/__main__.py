"""``python -I -m crypto_jail init | serve``: create a keystore, or run the jail on a Unix socket.

Passphrase sources, first match wins (never argv): ``--passphrase-fd N`` (serve; read to EOF,
used by the node's supervisor for its one start), ``--passphrase-credential NAME`` (serve; the
file ``$CREDENTIALS_DIRECTORY/NAME`` that systemd's ``LoadCredential=`` provides),
``--passphrase-file FILE`` (one trailing newline stripped), the environment variable
``OPENRED_JAIL_PASSPHRASE`` (removed from the environment once read), then an interactive
prompt if stdin is a terminal. ``--insecure-no-passphrase`` (init) writes a clear keystore for
development only; serving one prints a loud warning every time. New passphrases are at least
12 bytes long.

The process makes itself non-dumpable and sets its core limit to 0 before it reads any
passphrase or keystore byte (``crypto_jail.hardening.harden_early``).

``OPENRED_JAIL_KDF`` (or ``init --kdf``) picks the Argon2id cost: ``moderate`` (default),
``sensitive``, ``interactive``, or ``min`` for tests only: ``min`` needs
``--insecure-test-kdf`` (or ``OPENRED_JAIL_INSECURE_TEST_KDF=1``, for test suites that start
jails through other programs), which marks the keystore test-only; serving a test-only keystore
needs the flag (or the variable) again.

Exit codes: 0 success, 1 failure (message on stderr, no traceback), 2 usage error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import getpass
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from crypto_jail.errors import JailFailure, KeystoreError
from crypto_jail.hardening import exit_with_parent, harden, harden_early, seccomp_available
from crypto_jail.keystore import (
    DEFAULT_KDF_LEVEL,
    KDF_LEVELS,
    TEST_KDF_LEVELS,
    Keystore,
    create_keystore,
    load_keystore,
)
from crypto_jail.ops import JailState, TimePolicy
from crypto_jail.server import JailServer, log, prepare_socket, unlink_socket
from crypto_jail.witness import Witness

PASSPHRASE_ENV = "OPENRED_JAIL_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
KDF_ENV = "OPENRED_JAIL_KDF"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
TEST_KDF_ENV = "OPENRED_JAIL_INSECURE_TEST_KDF"
_MAX_PASSPHRASE = 4096
STOP_GRACE = 5.0
"""Seconds a served jail may take to stop once asked (SIGTERM, SIGINT, stdin at EOF)."""

_BANNER = "*" * 78


def insecure_warning(path: Path) -> str:
    """The loud development-mode warning."""
    return (
        f"{_BANNER}\n"
        f"WARNING: INSECURE DEVELOPMENT KEYSTORE {path}\n"
        "The private keys are stored UNENCRYPTED (file mode 0600 only). Anyone who can read\n"
        "this file can impersonate this node. Never use --insecure-no-passphrase in production.\n"
        f"{_BANNER}"
    )


def _strip_newline(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    return raw[:-1] if raw.endswith(b"\n") else raw


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with os.fdopen(fd, "rb", closefd=True) as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_PASSPHRASE:
                raise KeystoreError("passphrase too long")
    return b"".join(chunks)


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_PASSPHRASE + 3)
    except OSError as exc:
        raise KeystoreError(f"cannot read passphrase file: {exc.strerror or exc}") from exc
    raw = _strip_newline(raw)
    if len(raw) > _MAX_PASSPHRASE:
        raise KeystoreError("passphrase too long")
    return raw


def _credential_path(name: str) -> Path:
    """``$CREDENTIALS_DIRECTORY/name`` (systemd.exec(5) "Credentials"), checked."""
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory:
        raise KeystoreError(f"--passphrase-credential needs ${CREDENTIALS_ENV} "
                            "(set by systemd's LoadCredential=)")
    if not name or "/" in name or name in {".", ".."}:
        raise KeystoreError("a credential name is a plain file name")
    return Path(directory) / name


def read_passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes | None:
    """The passphrase from the sources in the module docstring; None when none is given."""
    env_value = os.environ.pop(PASSPHRASE_ENV, None)
    fd = getattr(args, "passphrase_fd", None)
    if fd is not None:
        return _read_fd(fd)
    credential = getattr(args, "passphrase_credential", None)
    if credential is not None:
        return _read_file(_credential_path(credential))
    if args.passphrase_file is not None:
        return _read_file(Path(args.passphrase_file))
    if env_value is not None:
        return env_value.encode("utf-8")
    if sys.stdin.isatty():
        first = getpass.getpass("Keystore passphrase: ")
        if confirm and getpass.getpass("Repeat passphrase: ") != first:
            raise KeystoreError("the passphrases differ")
        return first.encode("utf-8")
    return None


def cmd_init(args: argparse.Namespace) -> int:
    """Create a keystore and print only its public keys."""
    harden_early()  # before the passphrase is read or the keys exist
    path = Path(args.keystore)
    if args.insecure_no_passphrase:
        if args.passphrase_file is not None:
            raise KeystoreError("--insecure-no-passphrase and --passphrase-file exclude each other")
        os.environ.pop(PASSPHRASE_ENV, None)
        passphrase = None
        print(insecure_warning(path), file=sys.stderr, flush=True)
    else:
        passphrase = read_passphrase(args, confirm=True)
        if not passphrase:
            raise KeystoreError(
                f"no passphrase: use --passphrase-file FILE, {PASSPHRASE_ENV}, "
                "or --insecure-no-passphrase for development"
            )
    level = args.kdf or os.environ.get(KDF_ENV) or DEFAULT_KDF_LEVEL
    if passphrase is not None and level in TEST_KDF_LEVELS and not args.insecure_test_kdf:
        raise KeystoreError(f"KDF level {level!r} is for test keystores only; add "
                            "--insecure-test-kdf (or OPENRED_JAIL_INSECURE_TEST_KDF=1) to make one")
    keystore = create_keystore(path, passphrase, kdf_level=level,
                               test_only=args.insecure_test_kdf and passphrase is not None)
    info = keystore.public_info()
    if args.json:
        print(json.dumps(info, sort_keys=True), flush=True)
    else:
        for key in ("node_id", "sign_key", "box_key"):
            print(f"{key}: {info[key]}", flush=True)
    return 0


def _open_for_serving(args: argparse.Namespace) -> Keystore:
    passphrase = read_passphrase(args, confirm=False)
    keystore = load_keystore(Path(args.keystore), passphrase,
                             allow_test_only=args.insecure_test_kdf)
    if keystore.insecure:
        print(insecure_warning(Path(args.keystore)), file=sys.stderr, flush=True)
    return keystore


def _stop_when_stdin_closes() -> None:
    """Block on stdin; at EOF (the supervisor died or let go) stop this jail with SIGTERM."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    os.kill(os.getpid(), signal.SIGTERM)
    log("stdin closed: the supervisor is gone, stopping")


_deadline_asked = threading.Event()
_deadline_after: list[float] = []


def prepare_stop_deadline() -> None:
    """Start the thread that ends the process once :func:`_exit_after` asks it to.

    Started before serving, not when asked: the stop request may come from a signal handler,
    which runs on the main thread between any two bytecodes — inside ``Thread.start``'s hold
    of threading's non-reentrant limbo lock too (the serving loop starts a thread per client).
    Starting a thread there waited for that lock forever. Asking only sets an event."""

    def deadline() -> None:
        _deadline_asked.wait()
        time.sleep(_deadline_after[0])
        os._exit(1)

    threading.Thread(target=deadline, daemon=True, name="jail-deadline").start()


def _exit_after(seconds: float) -> None:
    """Exit the process ``seconds`` from now, whatever its threads are doing by then.

    Armed when the jail is asked to stop: a clean stop takes milliseconds, and a jail stuck
    past this (its serving loop or clean-up blocked, e.g. on a log line nobody reads) must
    not outlive its supervisor, nor ignore the SIGTERM that asked it to go. Nothing is
    logged: the log may be what blocks. Safe in a signal handler once
    :func:`prepare_stop_deadline` ran (the first request's ``seconds`` count)."""
    if not _deadline_after:
        _deadline_after.append(seconds)
    _deadline_asked.set()


def cmd_serve(args: argparse.Namespace) -> int:
    """Harden early, open the keystore, bind the socket, harden fully, print READY, serve."""
    harden_early()  # no core dumps, no same-uid tracing: before any secret is read
    if args.exit_on_stdin_eof and not exit_with_parent(args.supervisor_pid):
        # SIGTERM when the supervisor dies, whoever holds stdin open; but one that died
        # before this line sends none: stop now rather than serve on as an orphan.
        raise JailFailure(f"the supervisor (pid {args.supervisor_pid}) is gone: not starting")
    try:
        policy = TimePolicy(http_window=args.http_window, grant_skew=args.grant_skew,
                            grant_max_lifetime=args.grant_max_lifetime)
    except ValueError as exc:
        raise JailFailure(str(exc)) from None
    if args.idle_timeout <= 0 or args.frame_timeout <= 0:
        raise JailFailure("timeouts must be positive")
    keystore = _open_for_serving(args)
    if args.no_seccomp:
        log("WARNING: --no-seccomp: this jail can run programs, and open network sockets "
            "unless a network namespace can be created")
    elif not seccomp_available():
        raise JailFailure("libseccomp is not available here; install libseccomp2 "
                          "(or run with --no-seccomp on platforms without it)")
    # Opened before hardening (its writes then need no path Landlock allows).
    witness = Witness(Path(args.witness_file)) if args.witness_file else None
    split = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jail-split")
    state = JailState(keystore, split_executor=split, time_policy=policy,
                      extra_origins=frozenset(args.checkpoint_origin), witness=witness)
    allowed = frozenset({os.getuid(), *args.allow_uid, *map(_uid_of, args.allow_user)})
    server = JailServer(state, allowed_uids=allowed, frame_timeout=args.frame_timeout,
                        idle_timeout=args.idle_timeout)
    socket_path = Path(args.socket)
    sock = prepare_socket(socket_path, group=args.socket_group)
    try:
        # Still single-threaded here: unshare(CLONE_NEWNET) refuses multithreaded processes,
        # and Landlock and seccomp apply to the threads created after them.
        writable = sorted({Path(args.keystore).resolve().parent, socket_path.resolve().parent})
        hardened = harden(seccomp=not args.no_seccomp, writable=writable)
        if hardened.landlock_abi is None:
            log("Landlock is not available here: file writes are NOT confined")
        else:
            log(f"Landlock ABI {hardened.landlock_abi}: file writes confined to "
                + ", ".join(map(str, writable)))
        if hardened.network_cut:
            if args.no_seccomp:
                log("no seccomp, but network access is cut off by a new network namespace")
        else:
            log("WARNING: network access is NOT restricted (no seccomp, no network namespace)")
        prepare_stop_deadline()  # a thread created after hardening, as the ones below
        if args.exit_on_stdin_eof:
            threading.Thread(target=_stop_when_stdin_closes, daemon=True,
                             name="jail-stdin").start()

        def ready() -> None:
            log(f"serving node {keystore.node_id} on {socket_path}")
            print(f"READY {socket_path}", flush=True)

        # The stop handler stays installed through the clean-up below: a second SIGTERM (the
        # parent-death signal and the stdin watcher both send one) must not kill the jail
        # before it has removed its socket.
        server.run(sock, on_ready=ready, restore_signals=False,
                   on_stop=lambda: _exit_after(STOP_GRACE))
    finally:
        unlink_socket(socket_path, sock)
        split.shutdown(wait=False, cancel_futures=True)
        if witness is not None:
            witness.close()  # syncs what the directory's grant checkpoints left unsynced
    return 0


def _uid_of(user: str) -> int:
    import pwd  # only here: most jails never resolve a user name

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise JailFailure(f"no such user {user!r}") from None


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: "--passphrase SECRET" must never be taken for --passphrase-file.
    parser = argparse.ArgumentParser(prog="python -I -m crypto_jail", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a new keystore and print its public keys",
                          allow_abbrev=False)
    init.add_argument("--keystore", required=True, help="path of the keystore file to create")
    init.add_argument("--passphrase-file", help="file holding the passphrase")
    init.add_argument("--insecure-no-passphrase", action="store_true",
                      help="development only: store the keys unencrypted (0600)")
    init.add_argument("--kdf", choices=sorted(KDF_LEVELS),
                      help=f"Argon2id cost (default ${KDF_ENV} or {DEFAULT_KDF_LEVEL})")
    init.add_argument("--insecure-test-kdf", action="store_true",
                      help="tests only: allow the 'min' KDF level and mark the keystore test-only")
    init.add_argument("--json", action="store_true", help="print the public keys as JSON")
    serve = sub.add_parser("serve", help="serve the keystore's operations on a Unix socket",
                           allow_abbrev=False)
    serve.add_argument("--keystore", required=True)
    serve.add_argument("--socket", required=True, help="Unix socket path (parent dir 0700)")
    serve.add_argument("--passphrase-file", help="file holding the passphrase")
    serve.add_argument("--passphrase-fd", type=int, help="inherited fd to read the passphrase from")
    serve.add_argument("--passphrase-credential", metavar="NAME",
                       help=f"read the passphrase from ${CREDENTIALS_ENV}/NAME (systemd)")
    serve.add_argument("--insecure-test-kdf", action="store_true",
                       help="tests only: serve a test-only keystore (weak KDF)")
    serve.add_argument("--allow-uid", type=int, action="append", default=[],
                       help="another uid allowed to connect (repeatable)")
    serve.add_argument("--allow-user", action="append", default=[],
                       help="another user (by name) allowed to connect (repeatable)")
    serve.add_argument("--socket-group", metavar="GROUP",
                       help="group that may reach the socket: its directory may then be 0710/"
                            "0750 with that group, and the socket is 0660")
    serve.add_argument("--frame-timeout", type=float, default=10.0,
                       help="seconds a started frame may take to arrive (default 10)")
    serve.add_argument("--idle-timeout", type=float, default=60.0,
                       help="seconds a client may stay silent between frames (default 60)")
    serve.add_argument("--checkpoint-origin", action="append", default=[], metavar="ORIGIN",
                       help="another log origin whose checkpoints this jail signs (repeatable; "
                            "e.g. the first key's origin of a log after a key rotation)")
    serve.add_argument("--witness-file", metavar="PATH",
                       help="remember the newest checkpoint signed per origin in PATH and sign "
                            "only checkpoints that provably extend it (created if missing)")
    serve.add_argument("--http-window", type=int, default=60,
                       help="seconds an HTTP signature's created may be off this clock (60)")
    serve.add_argument("--grant-skew", type=int, default=300,
                       help="seconds a grant's issued_at may be off this clock (300)")
    serve.add_argument("--grant-max-lifetime", type=int, default=24 * 3600,
                       help="longest grant lifetime signed, in seconds (86400)")
    serve.add_argument("--exit-on-stdin-eof", action="store_true",
                       help="stop when stdin reaches EOF (a supervisor holds the other end, so "
                            "the jail never outlives it)")
    serve.add_argument("--supervisor-pid", type=int, metavar="PID",
                       help="with --exit-on-stdin-eof: the supervisor's pid; the jail stops at "
                            "once if that process is no longer its parent (it died while the "
                            "jail started, before the parent-death signal was set)")
    serve.add_argument("--no-seccomp", action="store_true",
                       help="skip the seccomp filter (platforms without libseccomp only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "supervisor_pid", None) is not None and not args.exit_on_stdin_eof:
        parser.error("--supervisor-pid needs --exit-on-stdin-eof")
    if os.environ.get(TEST_KDF_ENV) == "1":
        args.insecure_test_kdf = True
    try:
        if args.command == "init":
            return cmd_init(args)
        return cmd_serve(args)
    except JailFailure as exc:
        print(f"crypto_jail: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # e.g. a socket directory that cannot be created
        print(f"crypto_jail: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
