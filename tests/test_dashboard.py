"""The Grafana dashboard and provisioning files: built from the metric definitions,
portable (no datasource ids), and loadable by a stock Grafana as mounted.

That every panel's query evaluates against a real Prometheus is proven in
test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from leasestore.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "leasestore.json"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return list(panel.get("targets", []))


def test_committed_json_is_what_the_builder_makes() -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "build_dashboard.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_datasource_is_a_variable_never_an_id() -> None:
    board = dashboard()
    assert board["uid"] == "leasestore-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        for ref in [panel["datasource"], *(t["datasource"] for t in targets(panel))]:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_seed_metric_has_a_panel_with_its_threshold() -> None:
    panels = {p["title"]: p for p in dashboard()["panels"]}
    for metric in METRICS:
        panel = panels[metric.key]
        assert [t["expr"] for t in targets(panel)] == [metric.gauge, metric.threshold_gauge]
        override = panel["fieldConfig"]["overrides"][0]
        assert override["matcher"] == {"id": "byName", "options": "threshold"}


def test_operator_panels_are_there() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in targets(p)) for p in dashboard()["panels"]}
    assert "leasestore_tasks" in exprs["Tasks by status"]
    assert "leasestore_events_total" in exprs["Claim and release throughput"]
    assert "leasestore_oldest_lease_age_seconds" in exprs["Lease and queue ages"]
    assert 'alertstate="firing"' in exprs["Firing alerts"]


def test_provisioning_points_at_the_dashboards_folder() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["apiVersion"] == 1 and datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "leasestore.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    # grafana/dashboards is mounted there (README, "Grafana").
    assert path == "/var/lib/grafana/dashboards/leasestore", path
