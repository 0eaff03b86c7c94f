"""With monitoring on, the node's P2P fast path stays on and its calls are still counted."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from openred.crypto.client import JailClient
from openred.node.fastpath import FAST_P2P, _hooked
from tests.modules.monitoring.test_monitoring import get, monitored, samples
from tests.node.world import Directory, JailPair


async def test_monitoring_leaves_the_fast_path_on(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
        assert not _hooked(node.app)  # the middleware is no request hook
        fast = node.app.extensions[FAST_P2P]
        before = fast.served
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(
                    f"{node.url}/api/v3/p2p/messaging/send",
                    json={"session_id": "A" * 22, "counter": 0, "ciphertext": ""},
                    headers={"X-Request-Id": "p2p-call"},
                ) as resp:
                    assert resp.status in (400, 404)
                    assert resp.headers.getall("X-Request-Id") == ["p2p-call"]
                    assert resp.content_type == "application/problem+json"
        assert fast.served == before + 3  # answered by the fast path, not by Quart
        text = (await get(metrics_url))[2]
    p2p = {k: v for k, v in samples(text).items() if k[0] == "openred_http_requests_total"
           and ("route", "/api/v3/p2p/<module>/<action>") in k[1]}
    assert sum(p2p.values()) == 3
