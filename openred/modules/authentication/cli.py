"""``openred auth ...``: the operator's second factor and peer proofs, over the admin API.

``enroll`` prints the otpauth URI and a QR code in the terminal, then asks for the first code
(which finishes enrolment); ``login`` trades a code for a short-lived admin token kept in
``DATA_DIR/admin-token`` (0600), which the other commands send with sensitive actions;
``logout`` revokes it on the node and forgets it; ``disable`` needs a valid code;
``challenge PEER`` asks a peer to prove its key now.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from openred.cli_client import printable
from openred.errors import OpenRedError

__all__ = ["auth_group", "qr_text"]

DATA_DIR = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="OPENRED_DATA_DIR",
    default=Path("openred-node"), show_default=True, help="The node's data directory.",
)
CODE = click.option("--code", prompt="code from your authenticator app", hide_input=False,
                    help="The current 6-digit TOTP code.")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(1)


def _call(data_dir: Path, method: str, path: str, body: Any = None) -> Any:
    from openred.cli_client import AdminClient

    try:
        client = AdminClient.from_data_dir(data_dir)
        return client.get(path) if method == "GET" else client.post(path, body)
    except OpenRedError as exc:
        _fail(str(exc))


def qr_text(data: str) -> str:
    """``data`` as a QR code drawn with text characters (for a terminal)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    return out.getvalue()


@click.group("auth")
def auth_group() -> None:
    """The operator's second factor (TOTP) and peer proofs."""


@auth_group.command()
@DATA_DIR
def enroll(data_dir: Path) -> None:
    """Enrol a TOTP second factor: scan the QR code, then type the first code."""
    uri = _call(data_dir, "POST", "authentication/totp/enroll", {})["uri"]
    click.echo("Add this to your authenticator app (scan the QR code or copy the URI):")
    click.echo(qr_text(uri))
    click.echo(printable(str(uri)))
    code = click.prompt("first code from the app")
    _call(data_dir, "POST", "authentication/totp/confirm", {"code": code})
    click.echo("second factor enrolled: sensitive actions now need `openred auth login`")


@auth_group.command()
@DATA_DIR
@CODE
def login(data_dir: Path, code: str) -> None:
    """Trade a code for a short-lived admin token (kept 0600 in the data directory)."""
    from openred.cli import _when
    from openred.modules.authentication.files import write_admin_token

    answer = _call(data_dir, "POST", "authentication/token", {"code": code})
    path = write_admin_token(data_dir, answer["token"], int(answer["expires_at"]))
    click.echo(printable(f"admin token saved in {path}, valid until "
                         f"{_when(answer['expires_at'])}"))


@auth_group.command()
@DATA_DIR
def logout(data_dir: Path) -> None:
    """Revoke the CLI's admin token on the node, then forget it."""
    import contextlib
    import stat
    import time

    from openred.cli_client import AdminClient, printable
    from openred.errors import NodeNotRunning
    from openred.modules.authentication.files import ADMIN_TOKEN_FILE, read_admin_token

    path = data_dir / ADMIN_TOKEN_FILE
    with contextlib.suppress(OSError):
        if stat.S_ISREG(path.lstat().st_mode):
            path.chmod(0o600)  # a token others could read is the one to revoke above all
    if read_admin_token(data_dir, time.time()) is None:
        path.unlink(missing_ok=True)
        click.echo("no admin token to revoke (none, or expired)")
        return
    try:
        AdminClient.from_data_dir(data_dir).post("authentication/token/revoke", {})
    except NodeNotRunning:
        # Tokens live in the node's memory only: a node that stopped forgot them all.
        path.unlink(missing_ok=True)
        click.echo("the node is not running: its admin tokens ended with it; token removed")
        return
    except OpenRedError as exc:
        path.unlink(missing_ok=True)
        _fail(f"the token was removed here but not revoked on the node ({exc}): it stays "
              "valid until it expires")
    path.unlink(missing_ok=True)
    click.echo(printable(f"admin token revoked on the node and removed from {path}"))


@auth_group.command()
@DATA_DIR
@CODE
def disable(data_dir: Path, code: str) -> None:
    """Remove the second factor (needs a valid code)."""
    from openred.modules.authentication.files import ADMIN_TOKEN_FILE

    _call(data_dir, "POST", "authentication/totp/disable", {"code": code})
    (data_dir / ADMIN_TOKEN_FILE).unlink(missing_ok=True)
    click.echo("second factor disabled")


@auth_group.command("status")
@DATA_DIR
def status(data_dir: Path) -> None:
    """Whether a second factor is enrolled."""
    info = _call(data_dir, "GET", "authentication/totp")
    state = "enrolled" if info["enrolled"] else "pending" if info["pending"] else "not enrolled"
    click.echo(f"second factor: {state}")


@auth_group.command()
@DATA_DIR
@click.option("--purpose", default="operator", show_default=True,
              help="What the proof is for (bound into the signed challenge).")
@click.argument("peer")
def challenge(data_dir: Path, purpose: str, peer: str) -> None:
    """Ask PEER to prove, now, that it holds its identity key."""
    proof = _call(data_dir, "POST", "authentication/challenge",
                  {"peer": peer, "purpose": purpose})
    click.echo(printable(f"peer {proof['peer']} proved its key for {proof['purpose']} on "
                         f"session {proof['session_id']}"))


def register(group: Any) -> None:
    add: Callable[[click.Command], None] = group.add_command
    add(auth_group)
