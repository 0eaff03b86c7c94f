"""The file_sharing module's commands, added to ``openred`` through ``register_cli``.

* ``openred share PEER FILE [--expires DURATION] [--name NAME]`` — offer a file;
* ``openred files [--json]`` — offers sent and received, with their transfers;
* ``openred fetch OFFER_ID [--out DIR]`` — fetch with a progress bar (rate, ETA); Ctrl-C
  stops the node's fetch, and running the command again resumes it;
* ``openred unshare OFFER_ID`` / ``openred decline OFFER_ID``.

They talk to the running node's admin API (``/admin/v1/file_sharing/...``); errors are one line
on stderr and exit code 1.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["parse_duration", "register"]

_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
POLL = 0.2


def parse_duration(text: str) -> int:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"12h"`` or ``"7d"``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise click.BadParameter("a duration such as 90s, 30m, 12h or 7d")
    return int(match[1]) * _UNITS[match[2]]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def register(group: click.Group) -> None:
    """Add the commands to the ``openred`` group."""
    from openred import cli as base

    @group.command()
    @base.NODE_DATA_DIR
    @base.JSON
    @click.option("--expires", default="24h", show_default=True,
                  help="How long the offer stands: 90s, 30m, 12h, 7d.")
    @click.option("--name", default=None, help="The name the peer sees (default: FILE's).")
    @click.argument("peer")
    @click.argument("file", type=click.Path(path_type=Path))
    def share(data_dir: Path, as_json: bool, expires: str, name: str | None, peer: str,
              file: Path) -> None:
        """Offer FILE to PEER (node id or a known peer's unique prefix) for --expires."""
        body: dict[str, Any] = {"peer": peer, "path": str(file.absolute()),
                                "expires": parse_duration(expires)}
        if name is not None:
            body["name"] = name
        info = base._call(data_dir, "POST", "file_sharing/share", body)
        if as_json:
            click.echo(json.dumps(info, indent=2))
            return
        safe = base._safe
        base.console.print(f"offered {safe(info['name'])} ({_size(info['size'])}) to "
                           f"{safe(info['peer'])}: offer {safe(info['offer_id'])}, expires at "
                           f"{safe(base._when(info['expires_at']))}")

    @group.command()
    @base.NODE_DATA_DIR
    @base.JSON
    def files(data_dir: Path, as_json: bool) -> None:
        """Offers sent and received, newest first, with how far their transfers got."""
        items = base._call(data_dir, "GET", "file_sharing/offers")["items"]
        if as_json:
            click.echo(json.dumps(items, indent=2))
            return
        for item in items:
            item["size"] = _size(item["size"])
            transfer = item.get("transfer")
            if transfer and transfer["state"] != "not-started":
                item["transfer"] = f"{transfer['state']} {_size(transfer['verified'])}"
            else:
                item["transfer"] = ""
        base._table(f"{len(items)} offers", items, [
            "offer_id", "direction", "peer", "name", "size", "state", "expires_at", "transfer"])

    @group.command()
    @base.NODE_DATA_DIR
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Put the file in this directory (default: DATA_DIR/files/received).")
    @click.argument("offer_id")
    def fetch(data_dir: Path, out: Path | None, offer_id: str) -> None:
        """Fetch OFFER_ID, verifying every chunk; run it again to resume after any stop."""
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        client = base._admin(data_dir)
        body: dict[str, Any] = {"offer_id": offer_id}
        if out is not None:
            body["out"] = str(out.absolute())
        state = _request(client, "POST", "file_sharing/fetch", body)
        columns = (
            "[progress.description]{task.description}", BarColumn(),
            DownloadColumn(binary_units=True), TransferSpeedColumn(), TimeRemainingColumn(),
        )
        try:
            with Progress(*columns, console=base.err, transient=False) as bar:
                task = bar.add_task(offer_id[:8], total=state["total"],
                                    completed=state["verified"])
                while state["state"] == "running":
                    time.sleep(POLL)
                    state = _request(client, "GET", f"file_sharing/fetch/{offer_id}")
                    bar.update(task, completed=state["verified"])
        except KeyboardInterrupt:
            state = _request(client, "POST", f"file_sharing/fetch/{offer_id}/stop", {})
            base.err.print(f"stopped at {_size(state['verified'])} of {_size(state['total'])}: "
                           "run the same command again to resume")
            sys.exit(130)
        if state["state"] != "completed":
            base._fail(f"{state['reason']}: {state['detail']}")
        base.console.print(f"fetched {state['path']}")

    @group.command()
    @base.NODE_DATA_DIR
    @click.argument("offer_id")
    def unshare(data_dir: Path, offer_id: str) -> None:
        """Revoke OFFER_ID (an offer this node made): the peer gets nothing more."""
        base._call(data_dir, "POST", "file_sharing/unshare", {"offer_id": offer_id})
        base.console.print(f"offer {offer_id} revoked")

    @group.command()
    @base.NODE_DATA_DIR
    @click.argument("offer_id")
    def decline(data_dir: Path, offer_id: str) -> None:
        """Decline OFFER_ID (an offer this node received)."""
        base._call(data_dir, "POST", "file_sharing/decline", {"offer_id": offer_id})
        base.console.print(f"offer {offer_id} declined")


def _request(client: Any, method: str, path: str, body: Any = None) -> Any:
    from openred import cli as base
    from openred.errors import OpenRedError

    try:
        return client.request(method, path, body)
    except OpenRedError as exc:
        base._fail(str(exc))
