"""Request metrics through cached label children count exactly what labels() would."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from openred.web import metrics as m


def sample(metrics: m.Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_cached_children_count_per_label_set() -> None:
    metrics = m.Metrics("test")
    for _ in range(3):
        metrics.observe_request("GET", "/a/<x>", 200, 0.001)
    metrics.observe_request("GET", "/a/<x>", 404, 0.3)
    metrics.observe_request("POST", None, 405, 0.002)
    assert sample(metrics, "openred_http_requests_total", method="GET", route="/a/<x>",
                  status="200") == 3
    assert sample(metrics, "openred_http_requests_total", method="GET", route="/a/<x>",
                  status="404") == 1
    assert sample(metrics, "openred_http_requests_total", method="POST",
                  route="<unmatched>", status="405") == 1
    assert sample(metrics, "openred_http_request_duration_seconds_count", method="GET",
                  route="/a/<x>") == 4
    assert sample(metrics, "openred_http_request_duration_seconds_bucket", method="GET",
                  route="/a/<x>", le="0.0025") == 3
    assert b'openred_http_requests_total{method="GET",route="/a/<x>",status="200"} 3.0' in \
        generate_latest(metrics.registry)


def test_the_child_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "_MAX_CHILDREN", 4)
    metrics = m.Metrics("test")
    for status in range(200, 210):
        metrics.observe_request("GET", "/r", status, 0.001)
        assert len(metrics._children) <= 4
    metrics.observe_request("GET", "/r", 200, 0.001)
    assert sample(metrics, "openred_http_requests_total", method="GET", route="/r",
                  status="200") == 2


async def test_store_and_jail_children_count_per_label() -> None:
    from types import SimpleNamespace

    metrics = m.Metrics("test")

    async def append(events: list[Any]) -> list[Any]:
        return [SimpleNamespace(type=e, payload=b"") for e in events]

    async def call(op: str, args: dict[str, Any]) -> str:
        return op

    store = SimpleNamespace(append=append, head=SimpleNamespace(size=0))
    jail = SimpleNamespace(call=call)
    metrics.watch_store(store)
    metrics.watch_jail(jail)
    await store.append(["NodeRegistered", "NodeRegistered", "NodeUpdated"])
    await store.append(["NodeRegistered"])
    for op in ("sign", "sign", "public_key"):
        assert await jail.call(op, {}) == op
    assert sample(metrics, "openred_log_events_total", type="NodeRegistered") == 3
    assert sample(metrics, "openred_log_events_total", type="NodeUpdated") == 1
    assert sample(metrics, "openred_jail_call_duration_seconds_count", op="sign") == 2
    assert sample(metrics, "openred_jail_call_duration_seconds_count", op="public_key") == 1
