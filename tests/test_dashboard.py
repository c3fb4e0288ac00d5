"""The Grafana dashboard and provisioning files: built from the metric definitions,
portable (no datasource ids), made for fleets (``job``/``instance`` variables on every
query), read-only when provisioned, current schema only, and loadable by a stock Grafana
as mounted.

That every panel's query evaluates against a real Prometheus, and separates two stores
scraped at once, is proven in test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from leasestore.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "leasestore.json"
FILTER = 'job=~"$job", instance=~"$instance"'
# Written by this SDK build (Grafana 11.6); the Grafana 10.1 build wrote 36 with `style`.
SCHEMA_VERSION = 41
# Dashboard JSON that Grafana has deprecated or removed, where it would sit: the dashboard theme
# and legacy rows; the graph panel's own fields and legacy widths; tag-based variables.
DEPRECATED_KEYS = {
    "dashboard": {"style", "rows"},
    "panel": {"span", "legend", "xaxis", "yaxes", "lines", "bars", "points", "nullPointMode", "aliasColors",
              "seriesOverrides", "renderer", "dashes", "fill", "linewidth", "stack", "percentage", "thresholds",
              "tooltip", "x-axis", "y-axis", "scroll", "styles"},
    "variable": {"tags", "tagsQuery", "tagValuesQuery", "useTags"},
}
DEPRECATED_PANEL_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel", "grafana-worldmap-panel"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return list(panel.get("targets", []))


def all_exprs() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in targets(panel):
            yield panel["title"], target["expr"]


def builder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GRAFANA / "build_dashboard.py"), *args],
                          check=False, capture_output=True, text=True, cwd=ROOT)


def test_committed_json_is_what_the_builder_makes() -> None:
    result = builder("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_stale_json(tmp_path: Path) -> None:
    """What CI relies on: a JSON edited by hand (or not regenerated) fails `--check`."""
    stale = tmp_path / "leasestore.json"
    shutil.copy(DASHBOARD, stale)
    assert builder("--check", "--output", str(stale)).returncode == 0
    stale.write_text(DASHBOARD.read_text().replace('"editable": false', '"editable": true'))
    result = builder("--check", "--output", str(stale))
    assert result.returncode == 1 and result.stderr.strip() == f"{stale} is stale: run python grafana/build_dashboard.py"
    assert builder("--check", "--output", str(tmp_path / "missing.json")).returncode == 1


def test_the_sdk_pin_is_the_one_the_builder_expects() -> None:
    """pyproject pins the SDK build the JSON is made with: a `>=` pin would pick the Grafana 10.1
    build (higher epoch) and every regenerated JSON would be stale."""
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboard
    finally:
        sys.path.remove(str(GRAFANA))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pin = f"grafana-foundation-sdk=={build_dashboard.SDK_VERSION}"
    assert pin in extras["dashboards"] and pin in extras["test"], extras


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
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_job_and_instance_variables() -> None:
    """Multi-select with All, listed from the exporters' own leasestore_up (so All expands to
    leasestore targets only, never `.*`), the instances narrowed by the jobs chosen."""
    variables = [v for v in dashboard()["templating"]["list"]]
    assert [v["name"] for v in variables] == ["datasource", "job", "instance"]
    queries = {}
    for var in variables[1:]:
        assert var["type"] == "query" and var["multi"] is True and var["includeAll"] is True, var
        assert "allValue" not in var, var
        assert var["current"] == {"selected": True, "text": ["All"], "value": ["$__all"]}
        assert var["refresh"] == 2  # on time range change: a fleet's targets come and go
        assert not {"auto", "auto_min", "auto_count"} & set(var), var
        queries[var["name"]] = var["query"]["query"]
    assert queries == {"job": "label_values(leasestore_up, job)",
                       "instance": 'label_values(leasestore_up{job=~"$job"}, instance)'}


def test_every_query_filters_by_job_and_instance_and_keeps_them_apart() -> None:
    """Every series selector carries both variables; no aggregation drops job or instance, so
    two stores are two series and never a sum."""
    for title, expr in all_exprs():
        selectors = re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            if metric == "ALERTS":  # alerts about a whole job carry no instance: shown everywhere
                assert matchers.endswith('job=~"$job|", instance=~"$instance|"'), (title, expr)
            else:
                assert matchers.endswith(FILTER), (title, expr)
        bare = re.sub(r"[A-Za-z_:][\w:]*\{[^}]*\}", "", expr)
        assert not re.search(r"\b(leasestore_\w+|up|ALERTS)\b", bare), f"{title}: unfiltered series in {expr}"
        for grouping in re.findall(r"\b(?:sum|max|min|avg|count)\b\s*(by\s*\([^)]*\))?\s*\(", expr):
            assert grouping and {"job", "instance"} <= {
                label.strip() for label in grouping[grouping.index("(") + 1:-1].split(",")}, (title, expr)


def test_read_only_when_provisioned() -> None:
    assert dashboard()["editable"] is False
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "leasestore.yml").read_text())
    assert provider["providers"][0]["allowUiUpdates"] is False


def test_current_schema_only() -> None:
    board = dashboard()
    assert board["schemaVersion"] == SCHEMA_VERSION

    assert not DEPRECATED_KEYS["dashboard"] & set(board)
    for panel in board["panels"]:
        assert not DEPRECATED_KEYS["panel"] & set(panel), (panel["title"], DEPRECATED_KEYS["panel"] & set(panel))
    for var in board["templating"]["list"]:
        assert not DEPRECATED_KEYS["variable"] & set(var), var["name"]
    types = {p["type"] for p in board["panels"]}
    assert types == {"row", "timeseries", "table"} and not types & DEPRECATED_PANEL_TYPES
    for panel in board["panels"]:  # data source references are objects (uid), never names
        assert not isinstance(panel.get("datasource"), str), panel["title"]


def test_every_seed_metric_has_a_panel_with_its_threshold() -> None:
    panels = {p["title"]: p for p in dashboard()["panels"]}
    for metric in METRICS:
        panel = panels[metric.key]
        assert [t["expr"] for t in targets(panel)] == [f"{metric.gauge}{{{FILTER}}}",
                                                       f"{metric.threshold_gauge}{{{FILTER}}}"]
        override = panel["fieldConfig"]["overrides"][0]
        assert override["matcher"] == {"id": "byFrameRefID", "options": "B"}
        assert {p["id"] for p in override["properties"]} == {"custom.lineStyle", "color"}


def test_operator_panels_are_there() -> None:
    exprs: dict[str, str] = {}
    for title, expr in all_exprs():
        exprs[title] = exprs.get(title, "") + " " + expr
    assert "leasestore_tasks" in exprs["Tasks by status"]
    assert "leasestore_events_total" in exprs["Claim and release throughput"]
    assert "leasestore_oldest_lease_age_seconds" in exprs["Lease and queue ages"]
    assert "up{" in exprs["Exporter health"] and "leasestore_up{" in exprs["Exporter health"]
    assert 'alertstate="firing"' in exprs["Firing alerts"]


def test_provisioning_points_at_the_dashboards_folder() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["apiVersion"] == 1 and datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "leasestore.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    # grafana/dashboards is mounted there (README, "Grafana").
    assert path == "/var/lib/grafana/dashboards/leasestore", path
