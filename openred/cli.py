"""The ``openred`` command (DESIGN §1): ``openred directory init | serve | key | revoke | nodes``.

Every command takes ``--data-dir DIR`` (default ``$OPENRED_DATA_DIR`` or ``./openred-data``).
Errors are printed as one line on stderr with exit code 1 (2 for usage), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from openred.errors import ConfigurationError, OpenRedError
from openred.settings import DirectorySettings, write_env_file

T = TypeVar("T")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPENRED_DATA_DIR",
    default=Path("openred-data"), show_default=True, help="The directory's data directory.",
)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except OpenRedError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)


def _settings(data_dir: Path, **overrides: Any) -> DirectorySettings:
    try:
        return DirectorySettings.load(data_dir, **overrides)
    except OpenRedError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)


@click.group()
@click.version_option(package_name="openred")
def main() -> None:
    """OpenRed: autonomous nodes introduced by a minimal directory."""


@main.group()
def directory() -> None:
    """Run and operate a directory."""


@directory.command()
@DATA_DIR
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=int, help="Port to listen on.")
@click.option("--public-url", default="", help="The URL nodes use (default http://HOST:PORT).")
@click.option("--allow-private-urls", is_flag=True,
              help="Accept loopback/private node URLs (a private network or a demo).")
def init(data_dir: Path, host: str, port: int, public_url: str,
         allow_private_urls: bool) -> None:
    """Create the directory's keys (in its jail), database and .env."""
    from openred.directory.keys import create_keystore, start_jail
    from openred.directory.service import DirectoryService

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    values = {"OPENRED_HOST": host, "OPENRED_PORT": str(port),
              "OPENRED_ALLOW_PRIVATE_URLS": "1" if allow_private_urls else "0"}
    if public_url:
        values["OPENRED_PUBLIC_URL"] = public_url
    settings = _settings(data_dir)
    try:
        create_keystore(settings)
    except ConfigurationError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    write_env_file(data_dir / ".env", values, header="OpenRed directory settings "
                   "(OPENRED_* variables in the environment override these)")
    settings = _settings(data_dir)

    async def create() -> str:
        supervisor, jail = await start_jail(settings)
        try:
            service = await DirectoryService.open(settings, jail)
            key = service.key.b64url()
            await service.close()
        finally:
            await jail.close()
            await supervisor.stop()
        return key

    key = _run(create())
    console.print(f"directory initialized in {data_dir}")
    console.print("directory key (nodes pin it as OPENRED_DIRECTORY_KEY):")
    click.echo(key)


@directory.command()
@DATA_DIR
@click.option("--host", default=None, help="Address to listen on (default from settings).")
@click.option("--port", default=None, type=int, help="Port to listen on (default from settings).")
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
    if not settings.keystore_path.is_file():
        err.print(f"[red]error:[/] {data_dir} is not initialized: run `openred directory init`")
        sys.exit(1)
    from openred.directory.keys import PASSPHRASE_ENV, passphrase_available

    if not passphrase_available(settings):
        err.print(f"[red]error:[/] no keystore passphrase: set {PASSPHRASE_ENV} or create "
                  f"{settings.passphrase_path}")
        sys.exit(1)
    from openred.web.logging import configure_logging

    configure_logging()
    console.print(f"directory serving on {settings.base_url}")
    try:
        run(create_app(settings), settings.host, settings.port)
    except OpenRedError as exc:
        err.print(f"[red]error:[/] {exc}")
        sys.exit(1)


def _database(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / "openred.db"
    if not path.is_file():
        err.print(f"[red]error:[/] no directory database in {data_dir}: run "
                  "`openred directory init`")
        sys.exit(1)
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@directory.command()
@DATA_DIR
def key(data_dir: Path) -> None:
    """Print the directory's public key (what nodes pin as OPENRED_DIRECTORY_KEY)."""
    from openred.store.sqlite import key_history

    conn = _database(data_dir)
    try:
        history = key_history(conn)
    finally:
        conn.close()
    if not history:
        err.print("[red]error:[/] the directory's log has no key")
        sys.exit(1)
    click.echo(history[-1][1].b64url())


@directory.command()
@DATA_DIR
@click.argument("node_id")
@click.option("--reason", default="revoked by the operator", show_default=True)
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
    console.print(f"node {node_id} revoked")


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
        err.print(f"[red]error:[/] cannot read the directory database: {exc}")
        sys.exit(1)
    finally:
        conn.close()
    names = ("node_id", "status", "api_url", "version", "last_seen", "registered_at")
    items = [dict(zip(names, row, strict=True)) for row in rows]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    table = Table(title=f"{len(items)} nodes")
    for name in names:
        table.add_column(name)
    for item in items:
        table.add_row(*(str(item[n]) for n in names))
    console.print(table)


def run(argv: list[str] | None = None) -> None:
    """Entry point of the ``openred`` script."""
    entry: Callable[..., Any] = main
    entry(args=argv, prog_name="openred")


if __name__ == "__main__":
    run()
