"""The directory's log verifies with ``audit_tools verify``, projections included."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.directory.conftest import DirectoryFactory, Node


async def test_a_directory_log_with_every_event_verifies(
    directory_factory: DirectoryFactory, make_node: Any
) -> None:
    async with directory_factory() as directory:
        alice, bob = Node(directory), Node(directory)
        carol = Node(directory)
        carol.api_url = "http://127.0.0.1:9"
        for n in (alice, bob, carol):
            assert (await n.register()).status == 201
        assert (await alice.register()).status == 200  # NodeUpdated
        # Pushes to nobody: ConnectionGranted then ConnectionGrantFailed.
        path = "/api/v3/tokens/request-connection"
        assert (await alice.call("POST", path, {"target": carol.node_id})).status == 502
        service = directory.service
        real = service.clock
        service.clock = lambda: real() + 10 * 86400
        try:
            assert await service.sweep_statuses() == 3  # NodeStatusChanged → expired
        finally:
            service.clock = real
        assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200
        assert (await bob.call("DELETE", f"/api/v3/nodes/{bob.node_id}")).status == 200
        await service.revoke(carol.node_id, "test")
        db = directory.settings.data_dir / "openred.db"
    result = subprocess.run([sys.executable, "-m", "audit_tools", "verify", str(db), "--json"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True, report
    text = json.dumps(report)
    assert "projection" in text
