"""Builds grafana/dashboards/leasestore.json with grafana-foundation-sdk.

The panels for the seven health metrics are generated from
``leasestore.metrics.METRICS``, so a renamed gauge cannot leave a stale panel
behind; each draws its alert threshold as a dashed red series read from the
exported ``*_threshold`` gauge, so ``METRICS_THRESHOLD_*`` moves the line too.
Every query names the ``${datasource}`` variable, never a datasource id.

    .venv/bin/pip install -e '.[dashboards]'
    .venv/bin/python grafana/build_dashboard.py          # rewrite the JSON
    .venv/bin/python grafana/build_dashboard.py --check  # exit 1 if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DynamicConfigValue

from leasestore.metrics import METRICS

UID = "leasestore-overview"
OUT = Path(__file__).parent / "dashboards" / "leasestore.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
THRESHOLD_STYLE = [
    DynamicConfigValue("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
    DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "red"}),
]


def query(expr: str, legend: str, ref: str) -> PromQuery:
    return PromQuery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


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
                       query(metric.gauge, metric.key, "A"),
                       query(metric.threshold_gauge, "threshold", "B"))
            .override_by_name("threshold", THRESHOLD_STYLE))


def rate(kinds: str) -> str:
    return f'sum(rate(leasestore_events_total{{kind=~"{kinds}"}}[$__rate_interval]))'


def build() -> Dashboard:
    dashboard = (
        Dashboard("leasestore").uid(UID).tags(["leasestore"]).timezone("utc").refresh("30s")
        .time("now-6h", "now").editable()
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_row(Row("Health: the seven metrics and their alert thresholds"))
    )
    for metric in METRICS:
        dashboard = dashboard.with_panel(health_panel(metric))
    dashboard = dashboard.with_row(Row("Work"))
    dashboard = dashboard.with_panel(timeseries(
        "Tasks by status", "Tasks in the store by status, all queues.", "short",
        query("sum by (status) (leasestore_tasks)", "{{status}}", "A")))
    dashboard = dashboard.with_panel(timeseries(
        "Claim and release throughput", "Claims (incl. takeovers), done releases and retries per second.", "ops",
        query(rate("claimed|taken_over"), "claims/s", "A"),
        query(rate("released"), "done/s", "B"),
        query(rate("retry_scheduled"), "retries/s", "C")))
    dashboard = dashboard.with_panel(timeseries(
        "Lease and queue ages", "Oldest active lease and oldest ready task, database clock.", "s",
        query("max(leasestore_oldest_lease_age_seconds)", "oldest lease", "A"),
        query("max(leasestore_oldest_pending_age_seconds)", "oldest ready task", "B")))
    dashboard = dashboard.with_panel(timeseries(
        "Active leases by queue", "Leased tasks per queue.", "short",
        query("sum by (queue) (leasestore_active_leases)", "{{queue}}", "A")))
    dashboard = dashboard.with_panel(timeseries(
        "Exporter health", "1 when the exporter could read the store; scrape duration; scrape errors per second.",
        "short",
        query("min(leasestore_up)", "store readable", "A"),
        query("max(leasestore_scrape_duration_seconds)", "scrape seconds", "B"),
        query("sum(rate(leasestore_scrape_errors_total[$__rate_interval]))", "scrape errors/s", "C")))
    dashboard = dashboard.with_panel(
        Table().title("Firing alerts").description("leasestore alerts firing now (see docs/runbook.md).")
        .datasource(DATASOURCE).height(7).span(8)
        .with_target(query('ALERTS{alertname=~"LeaseStore.*", alertstate="firing"}', "{{alertname}}", "A")
                     .instant().format("table")))
    return dashboard


def with_panel_ids(model: Any) -> Any:
    # Stable ids keep links to a panel (viewPanel=N) valid across rebuilds.
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model


def render() -> str:
    return json.dumps(with_panel_ids(build().build()), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
