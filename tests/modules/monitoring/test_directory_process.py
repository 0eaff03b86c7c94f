"""A real ``openred directory serve`` process: metrics on their own address, JSON logs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, running_process, start_process


def test_the_directory_serves_metrics_apart_and_logs_json(tmp_path: Path) -> None:
    data, port, metrics_port = tmp_path / "d", free_port(), free_port()
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "OPENRED_JAIL_SOCKET": f"/tmp/openred-mon-{port}/j.sock",
           "OPENRED_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}", "OPENRED_LOG_FORMAT": "json"}
    init = subprocess.run([sys.executable, "-m", "openred.cli", "directory", "init",
                           "--data-dir", str(data), "--port", str(port)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert init.returncode == 0, init.stderr
    argv = [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)]
    with running_process(argv, port=port, env=env) as server:
        with urllib.request.urlopen(f"{server.url}/api/v3/health", timeout=10) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=10) as resp:
            text = resp.read().decode()
        try:
            urllib.request.urlopen(f"{server.url}/metrics", timeout=10)
            public = 200
        except urllib.error.HTTPError as exc:
            public = exc.code
        assert server.stop() == 0
        output = server.output()
    assert public == 404
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(text) for s in f.samples}
    assert found[("openred_http_requests_total", (("method", "GET"),
                  ("route", "/api/v3/health"), ("status", "200")))] >= 2  # and readiness
    assert found[("openred_directory_nodes", (("status", "active"),))] == 0
    assert found[("openred_log_entries", ())] >= 1
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(x["event"] == "MetricsServing" for x in lines), output
    assert all({"ts", "level", "logger", "event", "message", "node_id"} <= set(x)
               for x in lines)


def test_a_metrics_address_another_process_holds_stops_the_directory_with_one_line(
        tmp_path: Path) -> None:
    """Another local process listens on the directory's metrics address first. The directory
    served on without its listener (Prometheus scraping the other process) and said so
    nowhere; now it does not start, and says why in one line."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    data, port, metrics_port = tmp_path / "d", free_port(), squatter.getsockname()[1]
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "OPENRED_JAIL_SOCKET": f"/tmp/openred-mon-{port}/j.sock",
           "OPENRED_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}"}
    try:
        init = subprocess.run([sys.executable, "-m", "openred.cli", "directory", "init",
                               "--data-dir", str(data), "--port", str(port)], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert init.returncode == 0, init.stderr
        argv = [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir",
                str(data)]
        with pytest.raises(RuntimeError) as exited:
            start_process(argv, port=port, env=env).stop()  # before: it served on
    finally:
        squatter.close()
    output = str(exited.value)
    assert f"OPENRED_METRICS_ADDRESS 127.0.0.1:{metrics_port}" in output, output
    assert "Traceback" not in output, output
