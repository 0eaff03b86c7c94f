"""A session renewal due while the directory is down (served nodes, real jails, real logs).

Renewal at 80 % of a session's life needs a new grant from the directory. While the directory
is unreachable the pair keeps talking on the old session; the node says so once (not at every
lifecycle run until the session ends), and when the session expires unrenewed it says why, in
its log and to the operator's ``send``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import pytest

from openred.node.admin import create_admin_app
from tests.node import test_app
from tests.node.test_app import World, granted
from tests.servers import free_port

LIFETIME = 86400  # serve_node's session lifetime
KEY = "k" * 43
world = test_app.world  # the fixture: two served nodes and a directory log


def renewal_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "renew" in r.getMessage()]


async def test_a_renewal_the_directory_cannot_grant_warns_once_and_the_expiry_says_why(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="openred")
    svc = world.a.services
    channel = await svc.connect(await granted(world))
    # The directory goes away: nothing listens at its URL any more.
    gone = f"http://127.0.0.1:{free_port()}"
    svc.settings = replace(svc.settings, directory_url=gone)
    start = time.time()
    svc.clock = lambda: start + LIFETIME * 4 // 5 + 1
    for _ in range(5):  # five lifecycle runs (one every 30 s by default) with no directory
        outcome = await svc.lifecycle()
        assert outcome["renewed"] == 0 and outcome["sessions"] == 0
        await svc.send_message(channel.session_id, "the old session still works")
    failed = renewal_lines(caplog)
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failed[0].levelname == "WARNING"
    assert "directory" in failed[0].getMessage() and "unreachable" in failed[0].getMessage()

    caplog.clear()
    svc.clock = lambda: start + LIFETIME + 1
    assert (await svc.lifecycle())["sessions"] == 1
    said = [r for r in caplog.records if channel.session_id in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    message = said[0].getMessage()
    assert said[0].levelname == "WARNING"
    assert "expired" in message and "not renewed" in message and "unreachable" in message
    assert str(world.b.id) in message

    # The operator sends to the peer: the node says the session expired and why.
    admin = create_admin_app(world.a.app, KEY)
    reply = await admin.test_client().post(
        "/admin/v1/send", headers={"Authorization": f"Bearer {KEY}"},
        json={"peer": str(world.b.id), "text": "anyone?"})
    assert reply.status_code == 404
    detail = (await reply.get_json())["detail"]
    assert "expired" in detail and "not renewed" in detail and "unreachable" in detail, detail
    assert "connect" in detail
