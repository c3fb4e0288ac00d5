"""Builds grafana/dashboards/leasestore.json from the metric definitions.

Plain JSON is what Grafana's file provisioning reads; the panels for the seven
health metrics are generated from ``leasestore.metrics.METRICS`` so a renamed
gauge cannot leave a stale panel behind. Run after changing metrics:
``.venv/bin/python grafana/build_dashboard.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leasestore.metrics import METRICS

DS = {"type": "prometheus", "uid": "${datasource}"}
OUT = Path(__file__).parent / "dashboards" / "leasestore.json"


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(pid: int, title: str, description: str, targets: list[dict[str, Any]], unit: str,
          x: int, y: int, w: int = 8, h: int = 7, kind: str = "timeseries") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
    return body


def build() -> dict[str, Any]:
    panels = []
    pid = 1
    for i, m in enumerate(METRICS):
        unit = "percentunit" if m.gauge.endswith("_ratio") else "short"
        threshold_override = {
            "matcher": {"id": "byName", "options": "threshold"},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
        }
        p = panel(pid, m.key, f"{m.help} Dashed red: alert threshold ({m.gauge}_threshold).",
                  [target(m.gauge, m.key, "A"), target(m.threshold_gauge, "threshold", "B")],
                  unit, x=(i % 3) * 8, y=(i // 3) * 7)
        p["fieldConfig"]["overrides"].append(threshold_override)
        panels.append(p)
        pid += 1
    y = 21
    panels.append(panel(pid, "Tasks by status", "Tasks in the store by status, all queues.",
                        [target("sum by (status) (leasestore_tasks)", "{{status}}", "A")], "short", 0, y))
    pid += 1
    panels.append(panel(pid, "Claim and release throughput", "Claims (incl. takeovers) and done releases per second.",
                        [target('sum(rate(leasestore_events_total{kind=~"claimed|taken_over"}[$__rate_interval]))', "claims/s", "A"),
                         target('sum(rate(leasestore_events_total{kind="released"}[$__rate_interval]))', "done/s", "B"),
                         target('sum(rate(leasestore_events_total{kind="retry_scheduled"}[$__rate_interval]))', "retries/s", "C")],
                        "ops", 8, y))
    pid += 1
    panels.append(panel(pid, "Lease and queue ages", "Oldest active lease and oldest ready task, database clock.",
                        [target("max(leasestore_oldest_lease_age_seconds)", "oldest lease", "A"),
                         target("max(leasestore_oldest_pending_age_seconds)", "oldest ready task", "B")],
                        "s", 16, y))
    pid += 1
    y += 7
    panels.append(panel(pid, "Active leases by queue", "Leased tasks per queue.",
                        [target("sum by (queue) (leasestore_active_leases)", "{{queue}}", "A")], "short", 0, y))
    pid += 1
    panels.append(panel(pid, "Exporter health", "1 when the exporter could read the store; scrape duration.",
                        [target("min(leasestore_up)", "store readable", "A"),
                         target("max(leasestore_scrape_duration_seconds)", "scrape seconds", "B")],
                        "short", 8, y))
    pid += 1
    alerts = panel(pid, "Firing alerts", "leasestore alerts currently firing (see docs/runbook.md).",
                   [target('ALERTS{alertname=~"LeaseStore.*", alertstate="firing"}', "{{alertname}}", "A")],
                   "short", 16, y, kind="table")
    alerts["targets"][0]["format"] = "table"
    alerts["targets"][0]["instant"] = True
    panels.append(alerts)
    return {
        "id": None, "uid": "leasestore-overview", "title": "leasestore", "tags": ["leasestore"],
        "timezone": "utc", "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [],
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=2) + "\n")


if __name__ == "__main__":
    main()
