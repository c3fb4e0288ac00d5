"""Builds grafana/dashboards/leasestore.json with grafana-foundation-sdk.

The panels for the seven health metrics are generated from
``leasestore.metrics.METRICS``, so a renamed gauge cannot leave a stale panel
behind; each draws its alert threshold as a dashed red series read from the
exported ``*_threshold`` gauge, so ``METRICS_THRESHOLD_*`` moves the line too.
Every query names the ``${datasource}`` variable, never a datasource id, and
selects by the ``job`` and ``instance`` variables (multi-select, All), keeping
``job`` and ``instance`` in every result: two stores scraped by one Prometheus
are two series, never a sum. The dashboard is read-only (``editable: false``);
provisioning forbids saving UI edits (``allowUiUpdates: false``): change it here.

    .venv/bin/pip install -e '.[dashboards]'
    .venv/bin/python grafana/build_dashboard.py          # rewrite the JSON
    .venv/bin/python grafana/build_dashboard.py --check  # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from leasestore.metrics import METRICS

# The SDK publishes one build per Grafana version, the older versions under *higher* epochs, so
# a ">=" pin resolves to the Grafana 10.1 flavour (schemaVersion 36, the deprecated `style`).
# This is the one the committed JSON is made with (pyproject.toml pins the same).
SDK_VERSION = "1769699379!11.6.0"
UID = "leasestore-overview"
OUT = Path(__file__).parent / "dashboards" / "leasestore.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every series selector carries these; Grafana expands a multi-value or All selection to a regex
# alternation of the values it found (no custom "all value": `.*` would match any job at all).
FILTER = 'job=~"$job", instance=~"$instance"'
BY = "job, instance"
THRESHOLD_STYLE = [
    DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
    DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
]


def selector(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join([*matchers, FILTER])}}}"


def query(expr: str, legend: str, ref: str) -> PromQuery:
    return PromQuery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def variable(name: str, label: str, promql: str) -> QueryVariable:
    return (QueryVariable(name).label(label).datasource(DATASOURCE)
            # The object form the Prometheus data source's variable editor saves (qryType 1: label values).
            .query({"qryType": 1, "query": promql, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True)
            .current(VariableOption(selected=True, text=["All"], value=["$__all"])))


def timeseries(title: str, description: str, unit: str, *queries: PromQuery) -> Timeseries:
    panel = (Timeseries().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .height(7).span(8)
             .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM).show_legend(True)))
    for q in queries:
        panel = panel.with_target(q)
    return panel


def health_panel(metric: Any) -> Timeseries:
    unit = "percentunit" if metric.gauge.endswith("_ratio") else "short"
    return (timeseries(metric.key, f"{metric.help} Dashed red: alert threshold ({metric.threshold_gauge}).", unit,
                       query(selector(metric.gauge), "{{instance}}", "A"),
                       query(selector(metric.threshold_gauge), "threshold {{instance}}", "B"))
            .override_by_query("B", THRESHOLD_STYLE))


def rate(kinds: str) -> str:
    events = selector("leasestore_events_total", f'kind=~"{kinds}"')
    return f"sum by ({BY}) (rate({events}[$__rate_interval]))"


def build() -> Dashboard:
    dashboard = (
        Dashboard("leasestore").uid(UID).tags(["leasestore"]).timezone("utc").refresh("30s")
        .time("now-6h", "now").readonly().tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(variable("job", "Job", "label_values(leasestore_up, job)"))
        .with_variable(variable("instance", "Instance", 'label_values(leasestore_up{job=~"$job"}, instance)'))
        .with_row(Row("Health: the seven metrics and their alert thresholds"))
    )
    for metric in METRICS:
        dashboard = dashboard.with_panel(health_panel(metric))
    dashboard = dashboard.with_row(Row("Work"))
    dashboard = dashboard.with_panel(timeseries(
        "Tasks by status", "Tasks in each store by status, all queues.", "short",
        query(f"sum by ({BY}, status) ({selector('leasestore_tasks')})", "{{status}} {{instance}}", "A")))
    dashboard = dashboard.with_panel(timeseries(
        "Claim and release throughput", "Claims (incl. takeovers), done releases and retries per second.", "ops",
        query(rate("claimed|taken_over"), "claims/s {{instance}}", "A"),
        query(rate("released"), "done/s {{instance}}", "B"),
        query(rate("retry_scheduled"), "retries/s {{instance}}", "C")))
    dashboard = dashboard.with_panel(timeseries(
        "Lease and queue ages", "Oldest active lease and oldest ready task, database clock.", "s",
        query(f"max by ({BY}) ({selector('leasestore_oldest_lease_age_seconds')})", "oldest lease {{instance}}", "A"),
        query(f"max by ({BY}) ({selector('leasestore_oldest_pending_age_seconds')})",
              "oldest ready task {{instance}}", "B")))
    dashboard = dashboard.with_panel(timeseries(
        "Active leases by queue", "Leased tasks per queue.", "short",
        query(f"sum by ({BY}, queue) ({selector('leasestore_active_leases')})", "{{queue}} {{instance}}", "A")))
    dashboard = dashboard.with_panel(timeseries(
        "Exporter health", "Prometheus reached the exporter (up); the exporter could read the store "
        "(leasestore_up); scrape duration; scrape errors per second.", "short",
        query(selector("up"), "scraped {{instance}}", "A"),
        query(selector("leasestore_up"), "store readable {{instance}}", "B"),
        query(selector("leasestore_scrape_duration_seconds"), "scrape seconds {{instance}}", "C"),
        query(f"rate({selector('leasestore_scrape_errors_total')}[$__rate_interval])",
              "scrape errors/s {{instance}}", "D")))
    dashboard = dashboard.with_panel(
        Table().title("Firing alerts")
        .description("leasestore alerts firing now for the selected jobs and instances, and those about a "
                     "whole job (no instance label, e.g. no target left). See docs/runbook.md.")
        .datasource(DATASOURCE).height(7).span(8)
        .with_target(query('ALERTS{alertname=~"LeaseStore.*", alertstate="firing", '
                           'job=~"$job|", instance=~"$instance|"}', "{{alertname}}", "A")
                     .instant().format("table")))
    return dashboard


def tidy(model: Any) -> Any:
    # Stable ids keep links to a panel (viewPanel=N) valid across rebuilds.
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    # The SDK gives every variable the interval variable's auto* defaults; they mean nothing here.
    for var in model.templating.list_val or []:
        var.auto = var.auto_min = var.auto_count = None
    return model


def render() -> str:
    return json.dumps(tidy(build().build()), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    parser.add_argument("--output", type=Path, default=OUT, help=f"the JSON file (default {OUT})")
    args = parser.parse_args(argv)
    installed = metadata.version("grafana-foundation-sdk")
    if installed != SDK_VERSION:
        print(f"grafana-foundation-sdk {installed} is installed; the dashboard is built with {SDK_VERSION}: "
              "pip install -e '.[dashboards]'", file=sys.stderr)
        return 1
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
