"""The deploy/ files agree with the code: the dashboard queries only metrics the services
export, and Prometheus scrapes the addresses the systemd units give the services."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import yaml

from openred.web.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def exported_names() -> set[str]:
    names = set()
    for family in Metrics("any").registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "openred-dashboard.json").read_text())
    exported = exported_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(re.findall(r"\b(openred_[a-z_]+)\b", target["expr"]))
    assert used and used <= exported, used - exported
    # Every metric family is on the dashboard.
    families = {f.name for f in Metrics("any").registry.collect()}
    assert all(any(u.startswith(f) for u in used) for f in families), families


def unit_environment(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = (DEPLOY / "systemd" / name).read_text()
    parser.read_string(re.sub(r"\\\n\s*", " ", text))
    env = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    assert parser.has_section("Service") and parser.get("Service", "ExecStart")
    return env


def test_prometheus_scrapes_the_addresses_the_units_configure() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    directory = unit_environment("openred-directory.service")
    node = unit_environment("openred-node@.service")
    assert targets["openred-directory"] == [directory["OPENRED_METRICS_ADDRESS"]]
    assert targets["openred-node"] == [node["OPENRED_METRICS_ADDRESS"]]
    for env in (directory, node):
        assert env["OPENRED_METRICS_ADDRESS"].startswith("127.0.0.1:")  # never public
        assert env["OPENRED_LOG_FORMAT"] == "json"
    assert node["OPENRED_JAIL_SOCKET"] == "/run/openred-jail/%i/jail.sock"
    jail = (DEPLOY / "systemd" / "openred-jail@.service").read_text()
    assert "--socket %t/openred-jail/%i/jail.sock" in jail  # %t is /run for system units
