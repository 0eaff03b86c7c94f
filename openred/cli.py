"""The ``openred`` command (DESIGN §1, §10).

* ``openred directory init | serve | key | revoke | nodes`` — run and operate a directory;
* ``openred node init | serve`` — create and run a node;
* ``openred status | peers | connect PEER | send PEER TEXT | inbox | sessions`` — operate a
  running node through its local admin API (:class:`~openred.cli_client.AdminClient`); each
  prints a table, or JSON with ``--json``.

Every command takes ``--data-dir DIR`` (default ``$OPENRED_DATA_DIR``, else ``./openred-data``
for a directory and ``./openred-node`` for a node). Errors are printed as one line on stderr
with exit code 1 (2 for usage), never a traceback. Installed modules add their own commands
through ``register_cli(group)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openred.errors import ConfigurationError, OpenRedError
from openred.settings import DirectorySettings, write_env_file

T = TypeVar("T")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, however long

PORT = click.IntRange(0, 65535)

DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPENRED_DATA_DIR",
    default=Path("openred-data"), show_default=True, help="The directory's data directory.",
)


_serve_locks: list[int] = []


def _lock_data_dir(data_dir: Path) -> None:
    """One server per data directory (:func:`openred.files.hold_serve_lock`), held until exit."""
    from openred.files import hold_serve_lock

    try:
        _serve_locks.append(hold_serve_lock(data_dir))
    except OpenRedError as exc:
        err.print(f"[red]error:[/] {_safe(str(exc))}")
        sys.exit(1)


def _check_port(settings: DirectorySettings) -> None:
    """Port 0 is a random port: the directory would announce ``http://HOST:0``, the
    ``@target-uri`` base every signed request is checked against, which no node signs for."""
    if settings.port == 0 and not settings.public_url:
        _fail("port 0 listens on a random port nodes cannot know: give a port "
              "(--port, OPENRED_PORT) or the URL nodes reach (OPENRED_PUBLIC_URL)")


def _log_started(data_dir: Path) -> bool:
    """Whether ``data_dir``'s database holds the directory's log (its first entry names the
    key). No database, or one with no log in it yet, is what an init stopped between its
    keystore and its log leaves; a damaged one counts as started (init never writes over it).
    A keystore whose log was lost after it began is not taken for that: its witness holds
    the checkpoint the jail signed of it (crypto_jail/witness.py)."""
    from crypto_jail.witness import SLOT_SIZE, holds_checkpoints
    from openred.store.sqlite import DATABASE_NAME, key_history, readonly_uri

    witness = data_dir / "keystore.witness"
    if witness.exists():
        if not witness.is_file():
            return True
        with witness.open("rb") as handle:
            if holds_checkpoints(handle.read(2 * SLOT_SIZE)):
                return True
    path = data_dir / DATABASE_NAME
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True)
    except sqlite3.Error:
        return True
    try:
        return bool(key_history(conn))
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)
    except (sqlite3.Error, ValueError, KeyError, TypeError):
        return True
    finally:
        conn.close()


def _make_data_dir(data_dir: Path) -> None:
    """Create the data directory (0700) unless it is there: one error line if it cannot be (a
    link to a missing directory raised FileExistsError, a traceback)."""
    if data_dir.is_symlink() and not data_dir.exists():
        _fail(f"cannot create {data_dir}: it is a symbolic link to {data_dir.readlink()}, "
              "which does not exist")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot create {data_dir}: {exc.strerror or exc}")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except OpenRedError as exc:
        _fail(str(exc))


def _settings(data_dir: Path, **overrides: Any) -> DirectorySettings:
    from openred.files import check_data_dir

    try:
        check_data_dir(data_dir)
        return DirectorySettings.load(data_dir, **overrides)
    except OpenRedError as exc:
        _fail(str(exc))


class AnswerGuard(click.Group):
    """Commands read fields of what the admin API answered: an answer of another shape (a list
    where an object belongs, a missing or mistyped field — whatever squats a stopped node's
    port, or a node of another version) is one error line and exit 1, never a traceback. Only
    errors met after an answer was read are blamed on it; any other error still surfaces."""

    def invoke(self, ctx: click.Context) -> Any:
        from openred import cli_client

        before = cli_client.answers_read
        try:
            return super().invoke(ctx)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
            if cli_client.answers_read == before:
                raise
            err.print(f"[red]error:[/] the node's answer is not what this command expects "
                      f"({_safe(type(exc).__name__)}: {_safe(exc)})")
            sys.exit(1)


@click.group(cls=AnswerGuard)
@click.version_option(package_name="openred")
def main() -> None:
    """OpenRed: autonomous nodes introduced by a minimal directory."""


@main.group()
def directory() -> None:
    """Run and operate a directory."""


@directory.command()
@DATA_DIR
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=PORT, help="Port to listen on.")
@click.option("--public-url", default="", help="The URL nodes use (default http://HOST:PORT).")
@click.option("--allow-private-urls", is_flag=True,
              help="Accept loopback/private node URLs (a private network or a demo).")
@click.option("--jail-socket", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use the jail a service manager runs on this socket, as its own user, with "
                   "the keystore `crypto_jail init` made for it (deploy/systemd/"
                   "openred-directory-jail.service): no keystore is created here.")
def init(data_dir: Path, host: str, port: int, public_url: str,
         allow_private_urls: bool, jail_socket: Path | None) -> None:
    """Create the directory's keys (in its jail), database and .env."""
    from openred.directory.keys import create_keystore, open_jail
    from openred.directory.service import DirectoryService
    from openred.store.sqlite import DATABASE_NAME

    values = {"OPENRED_HOST": host, "OPENRED_PORT": str(port),
              "OPENRED_ALLOW_PRIVATE_URLS": "1" if allow_private_urls else "0"}
    if public_url:
        values["OPENRED_PUBLIC_URL"] = public_url
    from openred.files import check_data_dir

    try:  # a world-writable data dir, and what .env would say, refused before any file is made
        check_data_dir(data_dir)
        _check_port(DirectorySettings.load(data_dir, environ={**os.environ, **values}))
    except OpenRedError as exc:
        _fail(str(exc))
    _make_data_dir(data_dir)
    if jail_socket is not None:
        # The directory's jail is the service manager's: the directory's user never holds the
        # keystore or its passphrase, and the jail's witness is out of its reach.
        values["OPENRED_JAIL_SOCKET"] = str(jail_socket.absolute())
        settings = _settings(data_dir, jail_socket=jail_socket.absolute())
        if settings.keystore_path.exists() or (data_dir / DATABASE_NAME).exists():
            _fail(f"{data_dir} holds a directory already: this directory is initialized")
    else:
        settings = _settings(data_dir)
        if settings.keystore_path.is_file() and not _log_started(data_dir):
            console.print(f"finishing the init interrupted in {_safe(data_dir)}: its keystore "
                          "is kept")
        else:
            try:
                create_keystore(settings)
            except ConfigurationError as exc:
                _fail(str(exc))
    write_env_file(data_dir / ".env", values, header="OpenRed directory settings "
                   "(OPENRED_* variables in the environment override these)")
    settings = _settings(data_dir)

    async def create() -> str:
        supervisor, jail = await open_jail(settings)
        try:
            service = await DirectoryService.open(settings, jail)
            key = service.key.b64url()
            await service.close()
        finally:
            await jail.close()
            if supervisor is not None:
                await supervisor.stop()
        return key

    key = _run(create())
    console.print(f"directory initialized in {_safe(data_dir)}")
    console.print("directory key (nodes pin it as OPENRED_DIRECTORY_KEY):")
    click.echo(key)


@directory.command()
@DATA_DIR
@click.option("--host", default=None, help="Address to listen on (default from settings).")
@click.option("--port", default=None, type=PORT, help="Port to listen on (default from settings).")
def serve(data_dir: Path, host: str | None, port: int | None) -> None:
    """Serve the directory under Hypercorn until SIGTERM or SIGINT."""
    from openred.directory.app import create_app
    from openred.web.serve import run

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = _settings(data_dir, **overrides)
    _check_port(settings)
    from openred.directory.keys import PASSPHRASE_ENV, jail_is_external, passphrase_available
    from openred.store.sqlite import DATABASE_NAME

    # Without a keystore here, the jail is the service manager's (OPENRED_JAIL_SOCKET): the
    # directory holds neither the keystore nor its passphrase, and waits for the socket.
    external = jail_is_external(settings)
    initialized = (data_dir / DATABASE_NAME if external else settings.keystore_path).is_file()
    if not initialized:
        _fail(f"{data_dir} is not initialized: run `openred directory init`")
    if not external and not passphrase_available(settings):
        _fail(f"no keystore passphrase: set {PASSPHRASE_ENV} or create {settings.passphrase_path}")
    _lock_data_dir(data_dir)
    from openred.web.logging import configure_logging

    try:
        configure_logging()  # OPENRED_LOG_FORMAT=json for one JSON object a line
    except OpenRedError as exc:
        _fail(str(exc))
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        # Said once it takes connections, not before its jail, log and socket are up.
        run(create_app(settings), settings.host, settings.port,
            ready=lambda: console.print(f"directory serving on {_safe(settings.base_url)}"))
    except OpenRedError as exc:
        _fail(str(exc))


def _database(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / "openred.db"
    if not path.is_file():
        _fail(f"no directory database in {data_dir}: run `openred directory init`")
    from openred.store.chain import log_kind
    from openred.store.codec import decode_payload
    from openred.store.events import LOG_OPENED
    from openred.store.sqlite import readonly_uri

    conn = sqlite3.connect(readonly_uri(path), uri=True)
    # A node's data directory holds a log too: `key` printed the node's key as a directory's.
    try:
        row = conn.execute("SELECT type, payload FROM events WHERE seq = 1").fetchone()
        kind = (log_kind(decode_payload(bytes(row[1])))
                if row is not None and row[0] == LOG_OPENED else "directory")
    except (sqlite3.Error, ValueError, KeyError, TypeError, AttributeError):
        kind = "directory"  # no log yet, or one the command's own read reports on
    if kind != "directory":
        conn.close()
        _fail(f"{path} is a {kind} log, not a directory's: is {data_dir} the directory's "
              "data directory?")
    return conn


@directory.command()
@DATA_DIR
def key(data_dir: Path) -> None:
    """Print the directory's public key (what nodes pin as OPENRED_DIRECTORY_KEY)."""
    from openred.store.sqlite import key_history

    conn = _database(data_dir)
    try:
        history = key_history(conn)
    except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
        _fail(f"cannot read the directory's key from its database: {exc}")
    finally:
        conn.close()
    if not history:
        _fail("the directory's log has no key")
    click.echo(history[-1][1].b64url())


@directory.command()
@DATA_DIR
@click.argument("node_id")
@click.option("--reason", default="revoked by the operator", show_default=True,
              help="Why, as logged in the directory's log.")
def revoke(data_dir: Path, node_id: str, reason: str) -> None:
    """Revoke NODE_ID: it gets no more grants and cannot register again."""
    from openred.directory.keys import connect_jail
    from openred.directory.service import DirectoryService

    settings = _settings(data_dir)

    async def do() -> None:
        supervisor, jail = await connect_jail(settings)
        try:
            service = await DirectoryService.open(settings, jail)
            try:
                await service.revoke(node_id, reason)
            finally:
                await service.close()
        finally:
            await jail.close()
            if supervisor is not None:
                await supervisor.stop()

    _run(do())
    console.print(f"node {_safe(node_id)} revoked")


@directory.command()
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def nodes(data_dir: Path, as_json: bool) -> None:
    """List the nodes the directory knows."""
    conn = _database(data_dir)
    try:
        rows = conn.execute(
            "SELECT node_id, status, api_url, version, last_seen, registered_at "
            "FROM directory_nodes ORDER BY node_id").fetchall()
    except sqlite3.DatabaseError as exc:
        _fail(f"cannot read the directory database: {exc}")
    finally:
        conn.close()
    names = ("node_id", "status", "api_url", "version", "last_seen", "registered_at")
    items = [dict(zip(names, row, strict=True)) for row in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    # What a node registered stays on its row: a newline in a record drew lines that read as
    # more nodes (printable keeps newlines, for the messages `inbox` shows).
    _table(f"{len(items)} nodes", [
        {name: value.replace("\n", "\\x0a") if isinstance(value, str) else value
         for name, value in item.items()} for item in items], list(names))


# -- nodes --------------------------------------------------------------------------------

NODE_DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPENRED_DATA_DIR",
    default=Path("openred-node"), show_default=True, help="The node's data directory.",
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _safe(value: object) -> str:
    """``value`` as text to print with Rich: control characters and markup made inert (what a
    node answers may come from a hostile peer, or from whatever squats a stopped node's port)."""
    from rich.markup import escape

    from openred.cli_client import printable

    return escape(printable(str(value)))


def _when(value: object) -> object:
    """A Unix time as a UTC date (``2026-12-02T11:39:55Z``), as the answers' other times are
    written; anything else as it is. The admin API answers some times (a receipt's
    ``received_at``, ``expires_at``) in Unix seconds, which an operator cannot read."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return value


def _fail(message: str) -> NoReturn:
    """``error: MESSAGE`` as one line on stderr (markup and control characters inert, a newline
    shown as ``\\n``: a path, a variable's value or a jail's stderr may hold any), exit 1."""
    line = _safe(message).replace("\n", "\\n")
    err.print(f"[red]error:[/] {line}", soft_wrap=True)
    sys.exit(1)


@main.group()
def node() -> None:
    """Create and run a node."""


@node.command("init")
@NODE_DATA_DIR
@click.option("--directory", "directory_url", required=True, help="The directory's URL.")
@click.option("--directory-key", required=True,
              help="The directory's public key (`openred directory key`), pinned.")
@click.option("--api-url", required=True, help="The URL peers reach this node at.")
@click.option("--modules", default="messaging,file_sharing", show_default=True,
              help="Enabled modules, comma-separated.")
@click.option("--admin-port", type=click.IntRange(1, 65535), default=None,
              help="Port of the local admin API (default: the node's port + 100).")
@click.option("--allow-private-urls", is_flag=True,
              help="Accept loopback/private URLs (a private network or a demo).")
def node_init(data_dir: Path, directory_url: str, directory_key: str, api_url: str,
              modules: str, admin_port: int | None, allow_private_urls: bool) -> None:
    """Create the node's keys (in its jail), database, admin key and .env."""
    from urllib.parse import urlsplit

    from openred.directory.keys import create_keystore, start_jail
    from openred.node.admin_keys import ensure_admin_key
    from openred.node.services import NodeServices
    from openred.node.settings import NodeSettings

    try:  # urlsplit itself raises on "[::1" or "[not-an-address]"
        parts = urlsplit(api_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        _fail(f"--api-url {api_url!r} has a bad host or port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(f"--api-url {api_url!r} is not an http(s) URL with a host")
    try:
        where = urlsplit(directory_url)
        where.port  # noqa: B018 - a bad port raises
    except ValueError:
        _fail(f"--directory {directory_url!r} has a bad host or port")
    if where.scheme not in ("http", "https") or not where.hostname:
        _fail(f"--directory {directory_url!r} is not an http(s) URL with a host")
    from openred.files import check_data_dir

    try:
        check_data_dir(data_dir)
    except OpenRedError as exc:
        _fail(str(exc))
    _make_data_dir(data_dir)
    values = {
        "OPENRED_DIRECTORY_URL": directory_url.rstrip("/"),
        "OPENRED_DIRECTORY_KEY": directory_key,
        "OPENRED_PUBLIC_URL": api_url.rstrip("/"),
        "OPENRED_HOST": parts.hostname, "OPENRED_PORT": str(port),
        "OPENRED_MODULES": modules,
        "OPENRED_ALLOW_PRIVATE_URLS": "1" if allow_private_urls else "0",
    }
    if admin_port is not None:
        values["OPENRED_ADMIN_PORT"] = str(admin_port)
    try:
        settings = NodeSettings.load(data_dir, environ={**os.environ, **values})
        settings.directory_sign_key  # noqa: B018 - refuse a bad key before creating anything
        create_keystore(settings)
    except OpenRedError as exc:
        _fail(str(exc))
    write_env_file(data_dir / ".env", values, header="OpenRed node settings "
                   "(OPENRED_* variables in the environment override these)")
    ensure_admin_key(data_dir)
    settings = NodeSettings.load(data_dir)

    async def create() -> str:
        supervisor, jail = await start_jail(settings)
        try:
            services = await NodeServices.open(settings, jail)
            node_id = str(services.keys.node_id)
            await services.close()
        finally:
            await jail.close()
            await supervisor.stop()
        return node_id

    node_id = _run(create())
    console.print(f"node initialized in {_safe(data_dir)}")
    console.print("node id:")
    click.echo(node_id)


@node.command("serve")
@NODE_DATA_DIR
@click.option("--host", default=None, help="Address to listen on (default from the api_url).")
@click.option("--port", default=None, type=PORT,
              help="Port to listen on (default from the api_url).")
def node_serve(data_dir: Path, host: str | None, port: int | None) -> None:
    """Serve the node (P2P API, admin API, registration, lifecycle) until SIGTERM or SIGINT."""
    import logging

    from openred.directory.keys import PASSPHRASE_ENV, passphrase_available
    from openred.node.serve import run_node
    from openred.node.settings import NodeSettings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    from openred.files import check_data_dir

    try:
        check_data_dir(data_dir)
        settings = NodeSettings.load(data_dir, **overrides)
    except OpenRedError as exc:
        _fail(str(exc))
    # A keystore moved to a jail run by the service manager (deploy/systemd) is not here.
    if not settings.keystore_path.is_file() and not settings.socket_path.exists():
        _fail(f"{data_dir} is not initialized: run `openred node init`")
    try:
        settings.directory_sign_key  # noqa: B018 - refuse a missing or bad key up front
    except OpenRedError as exc:
        _fail(str(exc))
    if not settings.socket_path.exists() and not passphrase_available(settings):
        _fail(f"no keystore passphrase: set {PASSPHRASE_ENV} or create "
              f"{settings.passphrase_path}")
    _lock_data_dir(data_dir)
    from openred.web.logging import configure_logging

    try:
        configure_logging()  # OPENRED_LOG_FORMAT=json for one JSON object a line
    except OpenRedError as exc:
        _fail(str(exc))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    def serving() -> None:  # once it and its admin API take connections
        console.print(f"node serving on {_safe(settings.base_url)} (listening on "
                      f"{_safe(settings.host)}:{settings.port})")

    try:
        run_node(settings, ready=serving)
    except OpenRedError as exc:
        _fail(str(exc))


def _admin(data_dir: Path) -> Any:
    from openred.cli_client import AdminClient

    try:
        return AdminClient.from_data_dir(data_dir)
    except OpenRedError as exc:
        _fail(str(exc))


def _call(data_dir: Path, method: str, path: str, body: Any = None, **query: Any) -> Any:
    client = _admin(data_dir)
    try:
        if method == "GET":
            return client.get(path, **query)
        return client.post(path, body)
    except OpenRedError as exc:
        _fail(str(exc))


def _table(title: str, items: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for name in columns:
        table.add_column(name, overflow="fold")
    for item in items:
        table.add_row(*("" if item.get(n) is None else
                        _safe(_when(item[n]) if n.endswith("_at") or n == "last_seen"
                              else item[n])
                        for n in columns))
    console.print(table)


@main.command()
@NODE_DATA_DIR
@JSON
def status(data_dir: Path, as_json: bool) -> None:
    """The running node's id, URL, directory registration, log, sessions and modules."""
    info = _call(data_dir, "GET", "status")
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    reg = info.get("registration") or {}
    rows = [
        ("node id", info["node_id"]), ("api url", info["api_url"]),
        ("directory", info["directory_url"]),
        ("registered", f"{'yes' if reg.get('registered') else 'no'} (record version "
                       f"{info.get('record_version')})"),
        ("directory reachable", {True: "yes", False: "no", None: "unknown"}[
            reg.get("directory_reachable")]),
        ("log entries", info["log"]["size"]),
        ("sessions", f"{info['sessions']['active']} active of {info['sessions']['total']}"),
        ("unused tokens", info["tokens"]["unused"]),
        ("modules", ", ".join(info["modules"]["loaded"]) or "none"),
    ]
    checks = info.get("checks") or {}
    failing = {name: detail for name, detail in checks.items() if detail != "ok"}
    rows.append(("health", "ok (" + ", ".join(sorted(checks)) + ")" if not failing else
                 "; ".join(f"{name} failing: {detail}" for name, detail in failing.items())))
    if info["modules"]["failed"]:
        rows.append(("failed modules", ", ".join(info["modules"]["failed"])))
    if reg.get("last_error"):
        rows.append(("last error", reg["last_error"]))
    table = Table(title="node status", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    for name, value in rows:
        table.add_row(name, _safe(value))
    console.print(table)


@main.command()
@NODE_DATA_DIR
@JSON
def peers(data_dir: Path, as_json: bool) -> None:
    """Peers this node knows (from verified grants)."""
    items = _call(data_dir, "GET", "peers")["items"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    _table(f"{len(items)} peers", items, ["node_id", "api_url", "active_sessions",
                                          "last_session_at"])


@main.command()
@NODE_DATA_DIR
@JSON
@click.option("--state", default=None, help="Only sessions in this state (active, closed, …).")
def sessions(data_dir: Path, as_json: bool, state: str | None) -> None:
    """The node's sessions."""
    items = _call(data_dir, "GET", "sessions", state=state)["items"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    _table(f"{len(items)} sessions", items, ["session_id", "peer", "role", "state",
                                             "established_at", "expires_at"])


@main.command()
@NODE_DATA_DIR
@JSON
@click.argument("peer")
def connect(data_dir: Path, as_json: bool, peer: str) -> None:
    """Open a session with PEER (a node id, or a known peer's unique prefix): a grant from the
    directory, then a handshake."""
    info = _call(data_dir, "POST", "connect", {"peer": peer})
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(f"session {_safe(info['session_id'])} with {_safe(info['peer'])}")


@main.command()
@NODE_DATA_DIR
@JSON
@click.argument("peer")
@click.argument("text")
def send(data_dir: Path, as_json: bool, peer: str, text: str) -> None:
    """Send TEXT to PEER (node id or a known peer's unique prefix) on its newest session."""
    info = _call(data_dir, "POST", "send", {"peer": peer, "text": text})
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    console.print(f"delivered: message {_safe(info['message_id'])} (received at "
                  f"{_safe(_when(info['received_at']))})")


@main.command()
@NODE_DATA_DIR
@JSON
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many messages (1..1000).")
def inbox(data_dir: Path, as_json: bool, limit: int) -> None:
    """Received messages, newest first."""
    items = _call(data_dir, "GET", "inbox", limit=limit)["items"]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    _table(f"{len(items)} messages", items, ["received_at", "peer", "text"])


def _install_module_commands() -> None:
    from openred.modules import install_cli_hooks

    install_cli_hooks(main)


_install_module_commands()


def run(argv: list[str] | None = None) -> None:
    """Entry point of the ``openred`` script."""
    entry: Callable[..., Any] = main
    entry(args=argv, prog_name="openred")


if __name__ == "__main__":
    run()
