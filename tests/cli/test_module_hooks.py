"""The optional module hooks: ``register_admin_routes`` and ``register_cli``."""

from __future__ import annotations

from typing import Any

import click
from click.testing import CliRunner
from quart import Quart

from openred.modules import LoadReport, OpenRedModule, install_admin_hooks
from openred.modules.messaging import MessagingModule


class Extra(OpenRedModule):
    name = "extra"

    def register_admin_routes(self, admin_app: Any) -> None:
        @admin_app.get("/admin/v1/extra/ping")
        async def ping() -> dict[str, str]:
            return {"pong": "yes"}

    def register_cli(self, group: Any) -> None:
        @group.command("extra-ping")
        def extra_ping() -> None:
            click.echo("pong")


class Broken(OpenRedModule):
    name = "broken"

    def register_admin_routes(self, admin_app: Any) -> None:
        raise RuntimeError("no routes today")


async def test_admin_routes_of_loaded_modules_are_installed_and_a_failure_reported() -> None:
    app = Quart("admin")
    report = LoadReport(loaded={"messaging": MessagingModule(), "extra": Extra(),
                                "broken": Broken()})
    install_admin_hooks(app, report)
    assert sorted(report.loaded) == ["extra", "messaging"]
    assert "no routes today" in report.failed["broken"]
    reply = await app.test_client().get("/admin/v1/extra/ping")
    assert await reply.get_json() == {"pong": "yes"}


def test_a_module_adds_cli_commands_and_the_base_class_hooks_do_nothing() -> None:
    group = click.Group("openred")
    Extra().register_cli(group)
    MessagingModule().register_cli(group)
    MessagingModule().register_admin_routes(Quart("x"))
    result = CliRunner().invoke(group, ["extra-ping"])
    assert result.exit_code == 0 and result.output == "pong\n"
