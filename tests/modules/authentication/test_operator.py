"""The operator's TOTP second factor on a real node's admin API, and the CLI's admin token.

Time is the operator guard's injected clock, so codes are computed for exact steps: wrong,
replayed and expired codes are refused, failures are rate-limited and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from quart import Quart

from openred.cli import main
from openred.cli_client import AdminClient
from openred.crypto.client import JailClient
from openred.crypto.identity import from_b64url
from openred.modules import install_admin_hooks
from openred.modules.authentication.files import ADMIN_TOKEN_FILE, TOTP_STATE_FILE
from openred.modules.authentication.operator import WRAP_LABEL, OperatorAuth
from openred.modules.authentication.totp import code_at
from openred.node.admin import create_admin_app
from openred.node.admin_auth import SECOND_FACTOR
from openred.node.admin_keys import ensure_admin_key
from openred.node.serve import ADMIN_URL_FILE
from tests.node.test_app import Served, directory_app, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import serve_in_loop

SECRET = bytes(range(20))
T0 = 1_800_000_000
INBOX = "/admin/v1/inbox"


@dataclass
class Admin:
    node: Served
    app: Quart
    key: str
    operator: OperatorAuth
    jail: JailClient
    t: int = T0

    def client(self) -> Any:
        return self.app.test_client()

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    def code(self, offset: int = 0) -> str:
        return code_at(SECRET, self.t + offset)

    async def post(self, path: str, body: Any) -> Any:
        return await self.client().post(f"/admin/v1/authentication/{path}", json=body,
                                        headers=self.headers())

    async def inbox(self, **headers: str) -> int:
        reply = await self.client().get(INBOX, headers=self.headers(**headers))
        return reply.status_code

    async def enrolled(self) -> None:
        assert (await self.post("totp/enroll", {})).status_code == 201
        assert (await self.post("totp/confirm", {"code": self.code()})).status_code == 200
        self.t += 30


@contextlib.asynccontextmanager
async def admin_over(jail: JailClient, directory: Directory, data: Path,
                     modules: tuple[str, ...] = ("messaging", "authentication"),
                     ) -> AsyncIterator[Admin]:
    async with serve_in_loop(directory_app(directory)) as dir_url, serve_node(
        "op", jail, data, directory.key, dir_url, modules=modules,
    ) as node:
        key = ensure_admin_key(data)
        app = create_admin_app(node.app, key)
        install_admin_hooks(app, node.services.modules)
        operator = app.extensions.get(SECOND_FACTOR)
        admin = Admin(node, app, key, operator, jail)  # type: ignore[arg-type]
        if operator is not None:
            operator.clock = lambda: admin.t
            operator.random = lambda n: SECRET[:n]
        yield admin


@pytest.fixture
async def admin(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Admin]:
    async with JailClient(jails.procs[0].socket_path) as jail, admin_over(
        jail, directory, tmp_path / "op") as opened:
        yield opened


async def test_enrolment_stores_the_secret_wrapped_and_needs_a_first_code(admin: Admin) -> None:
    assert await admin.inbox() == 200  # not enrolled: the bearer key is enough
    reply = await admin.post("totp/enroll", {})
    assert reply.status_code == 201
    uri = (await reply.get_json())["uri"]
    assert uri.startswith("otpauth://totp/OpenRed:node-")
    assert "secret=AAAQEAYEAUDAOCAJBIFQYDIOB4" in uri
    state_file = admin.node.data / TOTP_STATE_FILE
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    text = state_file.read_text()
    assert "AAAQEAYEAUDAOCAJ" not in text and SECRET.hex() not in text
    wrapped = from_b64url(json.loads(text)["wrapped_secret"])
    assert await admin.jail.unwrap(WRAP_LABEL, wrapped) == SECRET  # wrapped by the jail
    assert await admin.inbox() == 200  # pending: not enforced until confirmed
    assert (await admin.post("totp/confirm", {"code": admin.code(90)})).status_code == 401
    assert (await admin.post("totp/confirm", {"code": admin.code()})).status_code == 200
    assert (await (await admin.client().get("/admin/v1/authentication/totp",
                                            headers=admin.headers())).get_json()) == {
        "enrolled": True, "pending": False}
    assert (await admin.post("totp/enroll", {})).status_code == 409


async def test_sensitive_actions_need_a_code_accepted_once(admin: Admin) -> None:
    await admin.enrolled()
    assert await admin.inbox() == 401  # the bearer key alone no longer suffices
    reply = await admin.client().get(INBOX, headers=admin.headers())
    assert (await reply.get_json())["type"].endswith(":second-factor-required")
    assert (await admin.client().get("/admin/v1/status", headers=admin.headers())
            ).status_code == 200  # not sensitive
    code = admin.code()
    assert await admin.inbox(**{"X-OpenRed-TOTP": code}) == 200
    assert await admin.inbox(**{"X-OpenRed-TOTP": code}) == 401  # replayed
    # The confirmation's step (30 s ago, still inside the window) was used too.
    assert await admin.inbox(**{"X-OpenRed-TOTP": admin.code(-30)}) == 401
    assert await admin.inbox(**{"X-OpenRed-TOTP": admin.code(-90)}) == 401  # expired
    assert await admin.inbox(**{"X-OpenRed-TOTP": "000000"}) == 401
    assert await admin.inbox(**{"X-OpenRed-Admin-Token": "forged"}) == 401
    assert await admin.inbox(**{"X-OpenRed-TOTP": admin.code(30)}) == 200  # next step: ok


async def test_wrong_codes_are_rate_limited_and_logged(
    admin: Admin, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "openred")
    await admin.enrolled()
    for _ in range(5):
        assert await admin.inbox(**{"X-OpenRed-TOTP": "123456"}) == 401
    reply = await admin.client().get(INBOX, headers=admin.headers(
        **{"X-OpenRed-TOTP": admin.code()}))
    assert reply.status_code == 429 and int(reply.headers["Retry-After"]) > 0
    failed = [r for r in caplog.records if getattr(r, "event", "") ==
              "OperatorSecondFactorFailed"]
    assert len(failed) == 5 and all(r.levelno == logging.WARNING for r in failed)
    assert any(getattr(r, "event", "") == "OperatorSecondFactorRateLimited"
               for r in caplog.records)
    admin.t += 301  # the window passed: the right code works again
    assert await admin.inbox(**{"X-OpenRed-TOTP": admin.code()}) == 200


async def test_admin_tokens_expire(admin: Admin) -> None:
    await admin.enrolled()
    reply = await admin.post("token", {"code": admin.code()})
    assert reply.status_code == 200
    body = await reply.get_json()
    assert body["expires_at"] == admin.t + 900
    token = body["token"]
    assert await admin.inbox(**{"X-OpenRed-Admin-Token": token}) == 200
    assert await admin.inbox(**{"X-OpenRed-Admin-Token": token}) == 200  # reusable until expiry
    admin.t += 900
    assert await admin.inbox(**{"X-OpenRed-Admin-Token": token}) == 401
    assert (await admin.post("token", {"code": "12345"})).status_code == 401


async def test_disabling_needs_a_valid_code(admin: Admin) -> None:
    await admin.enrolled()
    assert (await admin.post("totp/disable", {})).status_code == 422
    assert (await admin.post("totp/disable", {"code": "999999"})).status_code == 401
    assert (await admin.post("totp/disable", {"code": admin.code()})).status_code == 200
    assert not (admin.node.data / TOTP_STATE_FILE).exists()
    assert await admin.inbox() == 200
    assert (await admin.post("totp/disable", {"code": admin.code(30)})).status_code == 409


async def test_an_enrolled_factor_is_enforced_even_without_the_module(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    async with JailClient(jails.procs[1].socket_path) as jail:
        async with admin_over(jail, directory, tmp_path / "op") as admin:
            await admin.enrolled()
        async with admin_over(jail, directory, tmp_path / "op", modules=("messaging",)) as bare:
            reply = await bare.client().get(INBOX, headers=bare.headers())
            assert reply.status_code == 503
            assert (await reply.get_json())["type"].endswith(":second-factor-unavailable")


async def test_the_cli_logs_in_and_keeps_its_token_private(
    admin: Admin,
) -> None:
    data = admin.node.data
    async with serve_in_loop(admin.app) as url:
        (data / ADMIN_URL_FILE).write_text(url + "\n")
        runner = CliRunner()

        def cli(*args: str, input: str | None = None) -> Any:
            return runner.invoke(main, [*args, "--data-dir", str(data)], input=input)

        enrolled = await asyncio.to_thread(cli, "auth", "enroll", input=admin.code() + "\n")
        assert enrolled.exit_code == 0, enrolled.output
        assert "otpauth://totp/OpenRed" in enrolled.output and "█" in enrolled.output
        denied = await asyncio.to_thread(cli, "inbox")
        assert denied.exit_code == 1 and "second factor" in denied.output
        admin.t += 30
        login = await asyncio.to_thread(cli, "auth", "login", "--code", admin.code())
        assert login.exit_code == 0, login.output
        token_file = data / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert AdminClient.from_data_dir(data).admin_token
        inbox = await asyncio.to_thread(cli, "inbox")
        assert inbox.exit_code == 0, inbox.output
        status = await asyncio.to_thread(cli, "auth", "status")
        assert "second factor: enrolled" in status.output
        admin.t += 30
        off = await asyncio.to_thread(cli, "auth", "disable", "--code", admin.code())
        assert off.exit_code == 0, off.output
        assert not token_file.exists()


async def test_openred_status_shows_the_health_checks(admin: Admin) -> None:
    reply = await admin.client().get("/admin/v1/status", headers=admin.headers())
    assert (await reply.get_json())["checks"] == {
        "database": "ok", "jail": "ok", "directory": "ok"}
    data = admin.node.data
    async with serve_in_loop(admin.app) as url:
        (data / ADMIN_URL_FILE).write_text(url + "\n")
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["status", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "health" in result.output and "ok (database, directory, jail)" in result.output


async def test_concurrent_wrong_codes_cannot_outrun_the_rate_limit(admin: Admin) -> None:
    """Codes sent at once must not all pass the failure check before the first is counted.

    The check used to run before the guard's lock: every request of a burst saw no failure
    yet, then waited for the lock and was tried — a burst of N guesses per window, not 5.
    """
    await admin.enrolled()
    guesses = [f"{n:06d}" for n in range(20)]
    valid = {admin.code(o) for o in (-30, 0, 30)}
    guesses = [g for g in guesses if g not in valid]
    replies = await asyncio.gather(*(
        admin.client().post("/admin/v1/authentication/token", json={"code": g},
                            headers=admin.headers()) for g in guesses))
    statuses = [r.status_code for r in replies]
    assert statuses.count(401) == 5, statuses
    assert statuses.count(429) == len(guesses) - 5, statuses


async def test_logout_revokes_the_token_on_the_node(admin: Admin) -> None:
    """``openred auth logout`` only removed the CLI's file: a copy of the token taken before
    (a backup, another user's read of a badly kept file, a shell history) kept opening
    sensitive actions until it expired, 15 minutes later. Now the node forgets it."""
    data = admin.node.data
    await admin.enrolled()
    async with serve_in_loop(admin.app) as url:
        (data / ADMIN_URL_FILE).write_text(url + "\n")

        def cli(*args: str) -> Any:
            return CliRunner().invoke(main, [*args, "--data-dir", str(data)])

        login = await asyncio.to_thread(cli, "auth", "login", "--code", admin.code())
        assert login.exit_code == 0, login.output
        stolen = AdminClient.from_data_dir(data).admin_token
        assert stolen and await admin.inbox(**{"X-OpenRed-Admin-Token": stolen}) == 200
        logout = await asyncio.to_thread(cli, "auth", "logout")
        assert logout.exit_code == 0, logout.output
        assert not (data / ADMIN_TOKEN_FILE).exists()
        assert await admin.inbox(**{"X-OpenRed-Admin-Token": stolen}) == 401
        assert "revoked" in logout.output
        assert (await admin.post("token/revoke", {})).status_code == 422  # which token?
        # Logging out again (no token left) says so and changes nothing.
        again = await asyncio.to_thread(cli, "auth", "logout")
        assert again.exit_code == 0 and "no admin token" in again.output


async def test_wrong_codes_from_elsewhere_do_not_lock_out_the_operator_at_the_node(
    admin: Admin, caplog: pytest.LogCaptureFixture,
) -> None:
    """Whoever holds a stolen bearer key could send five wrong codes every five minutes: one
    limit for everyone, so the operator's own logins were refused (429) for as long as the
    attacker kept at it. Failures are now counted apart for connections the node's user, the
    admin key's owner or root opened on this machine (the kernel's socket table says whose a
    connection is): the attacker's connections, which the node cannot attribute to one of
    them (here the in-process test client; another user's or another host's alike), lock
    out only each other."""
    caplog.set_level(logging.INFO, "openred")
    await admin.enrolled()
    for _ in range(5):
        assert await admin.inbox(**{"X-OpenRed-TOTP": "123456"}) == 401
    assert await admin.inbox(**{"X-OpenRed-TOTP": admin.code()}) == 429
    async with serve_in_loop(admin.app) as url, aiohttp.ClientSession() as session:
        async def inbox(code: str) -> int:
            async with session.get(f"{url}{INBOX}", headers=admin.headers(
                    **{"X-OpenRed-TOTP": code})) as reply:
                return reply.status

        assert await inbox(admin.code()) == 200  # the operator, at the node
        for _ in range(5):
            assert await inbox("123456") == 401  # its own failures still count, for it
        assert await inbox(admin.code(30)) == 429
    failed = [r for r in caplog.records if getattr(r, "event", "") ==
              "OperatorSecondFactorFailed"]
    assert [getattr(r, "caller", None) for r in failed] == ["elsewhere"] * 5 + ["local"] * 5
