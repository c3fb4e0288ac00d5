"""End to end: the store, the exporter process, a real Prometheus with the alert
rules loaded, and every Grafana panel's query evaluated by that Prometheus.

The exporter runs as its own process (``python -m leasestore exporter``) with TLS
and basic auth, so the secure mode an operator would use off loopback is the
one Prometheus scrapes here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from leasestore.metrics import METRICS
from tests.conftest import require_binary
from tests.prometheus import Prometheus, free_port, self_signed_cert, stop_process
from tests.scenarios import EXPECTED, FIRING, breach_some_thresholds

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporter" / "rules" / "leasestore.rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "leasestore.json"
JOB = "leasestore"
# Grafana fills these in; Prometheus needs concrete values. Ranges span several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__interval": "1s", "$__range": "1m"}


def fast_rules(folder: Path) -> Path:
    """The shipped rules with every ``for:`` cut to 1 s, so a test sees them fire.

    Expressions, labels and annotations are untouched; the ``for:`` durations
    themselves are proven by ``promtool test rules`` (test_alerting.py).
    """
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "1s"
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ExporterProcess:
    def __init__(self, db_url: str, folder: Path) -> None:
        require_binary("openssl")
        self.cert, key = self_signed_cert(folder)
        self.password_file = folder / "password"
        self.password_file.write_text("scrape-secret\n")
        self.port = free_port()
        self.log = (folder / "exporter.log").open("wb")
        env = {**os.environ, "LEASESTORE_EXPORTER_PASSWORD": ""}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leasestore", "exporter", "--db", db_url, "--port", str(self.port),
             "--tls-cert", str(self.cert), "--tls-key", str(key),
             "--basic-auth-user", "prometheus", "--basic-auth-password-file", str(self.password_file)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": JOB, "scheme": "https", "scrape_interval": "1s", "scrape_timeout": "900ms",
            "basic_auth": {"username": "prometheus", "password_file": str(self.password_file)},
            "tls_config": {"ca_file": str(self.cert)},
            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
        }

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def stack(db_url: str, tmp_path: Path) -> Iterator[Prometheus]:
    """Store with a known history, exporter process, Prometheus scraping it with the rules."""
    binary = require_binary("prometheus")
    breach_some_thresholds(db_url)
    exporter = ExporterProcess(db_url, tmp_path)
    prometheus = None
    try:
        prometheus = Prometheus(binary, tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(fast_rules(tmp_path))],
            "scrape_configs": [exporter.scrape_config()],
        })
        yield prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()


def sample_values(prometheus: Prometheus, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in prometheus.query(expr)]


def firing(prometheus: Prometheus) -> set[str]:
    return {r["metric"]["alertname"] for r in prometheus.query('ALERTS{alertstate="firing"}')}


def grafana_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert not re.search(r"\$\w", expr), f"panel {panel['title']!r}: unresolved variable in {expr}"
            exprs.append((panel["title"], expr))
    return exprs


@pytest.mark.prometheus
@pytest.mark.slow
def test_prometheus_sees_the_store(stack: Prometheus) -> None:
    prometheus = stack
    # Enough 1 s scrapes for every rate() window of the dashboard to hold two samples.
    prometheus.wait_for(lambda: sample_values(prometheus, f'count_over_time(up{{job="{JOB}"}}[30s]) >= 5') or None,
                        timeout=40, what="five scrapes of the exporter")
    assert sample_values(prometheus, f'up{{job="{JOB}"}}') == [1.0], "Prometheus could not scrape over TLS+auth"
    assert sample_values(prometheus, "leasestore_up") == [1.0]

    # The seven gauges carry exactly what the store's history says.
    for metric in METRICS:
        assert sample_values(prometheus, metric.gauge) == [EXPECTED[metric.gauge]], metric.gauge
        assert sample_values(prometheus, metric.threshold_gauge) == [metric.default_threshold]

    # Exactly the breached thresholds alert: no more, no fewer.
    prometheus.wait_for(lambda: firing(prometheus) == FIRING or None, timeout=20,
                        what=f"exactly {sorted(FIRING)} firing (now {sorted(firing(prometheus))})")
    rules = prometheus.api("rules")["groups"][0]["rules"]
    states = {r["name"]: r["state"] for r in rules}
    assert {name for name, state in states.items() if state != "inactive"} == FIRING, states
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]

    # Every Grafana panel's query evaluates and returns data.
    for title, expr in grafana_exprs():
        data = prometheus.api("query", query=expr)
        assert data["result"], f"panel {title!r}: no data for {expr}"


@pytest.mark.prometheus
def test_unauthenticated_scrape_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    """The same exporter process answers 401 without the password: Prometheus's up is 0."""
    binary = require_binary("prometheus")
    exporter = ExporterProcess(sqlite_url, tmp_path)
    config = exporter.scrape_config()
    del config["basic_auth"]
    prometheus = Prometheus(binary, tmp_path / "prometheus", {
        "global": {"scrape_interval": "1s"}, "scrape_configs": [config]})
    try:
        prometheus.wait_for(lambda: sample_values(prometheus, f'up{{job="{JOB}"}}') or None,
                            timeout=20, what="a scrape attempt")
        assert sample_values(prometheus, f'up{{job="{JOB}"}}') == [0.0]
        targets = prometheus.api("targets")["activeTargets"]
        assert "401" in targets[0]["lastError"], targets[0]["lastError"]
    finally:
        prometheus.stop()
        exporter.stop()
