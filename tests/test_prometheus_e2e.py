"""End to end: two stores, an exporter process for each, a real Prometheus scraping both as
one job with the alert rules loaded, and every Grafana panel's query evaluated by that
Prometheus with the dashboard's ``job``/``instance`` variables filled in as Grafana fills them.

Both exporters run as their own processes over TLS with basic auth, the secure mode an operator
would use off loopback: one with the shorthand flags (``leasestore exporter --tls-cert ...``),
one with the ecosystem's ``--web.config.file`` (bcrypt hash), scraped with the same credentials.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from leasestore import LeaseStore, RetryPolicy
from leasestore.metrics import METRICS, compute_metrics
from tests.conftest import require_binary
from tests.prometheus import Prometheus, free_port, self_signed_cert, stop_process
from tests.scenarios import EXPECTED, FIRING, breach_some_thresholds

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporter" / "rules" / "leasestore.rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "leasestore.json"
JOB = "leasestore"
PASSWORD = "scrape-secret"
# Grafana fills these in; Prometheus needs concrete values. Ranges span several 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "20s", "$__interval": "1s", "$__range": "1m"}
# The second store's exporter runs with a threshold of its own: its threshold line differs.
B_ENV = {"METRICS_THRESHOLD_LOCK_CONFLICT_EVENTS": "150"}


def fast_rules(folder: Path) -> Path:
    """The shipped rules with every ``for:`` cut to 1 s, so a test sees them fire.

    Expressions, labels and annotations are untouched; the ``for:`` durations
    themselves are proven by ``promtool test rules`` (test_alerting.py).
    """
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def busier_history(url: str) -> None:
    """The first store's history and then some: a third dead letter, and an `index` queue with
    three tasks, one of them leased. Every panel has data for both stores, and several differ."""
    breach_some_thresholds(url)
    store = LeaseStore(url, retry_policy=RetryPolicy(base=60, cap=60, jitter=0))
    store.enqueue("mail", task_id="dead-3", max_attempts=1)
    store.release_task(store.claim_task(task_id="dead-3", owner="a").lease, "failed", "smtp down")
    for i in range(3):
        store.enqueue("index", task_id=f"index-{i}")
    store.claim_task(task_id="index-0", owner="e", ttl=600)
    store.close()


class ExporterProcess:
    """An exporter process over TLS with basic auth: the shorthand flags through the
    ``leasestore exporter`` command, or a ``--web.config.file`` with a bcrypt hash."""

    def __init__(self, db_url: str, folder: Path, cert: Path, key: Path, *, web_config: bool = False,
                 env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db_url, self.cert = db_url, cert
        self.password_file = folder / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.port = free_port()
        self.instance = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "LEASESTORE_EXPORTER_PASSWORD": "", **(env or {})}
        common = ["--db", db_url, "--port", str(self.port)]
        if web_config:
            config = folder / "web.yml"
            config.write_text(yaml.safe_dump({
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()},
            }))
            command = [sys.executable, "-m", "exporter.server", *common, "--web.config.file", str(config)]
        else:
            command = [sys.executable, "-m", "leasestore", "exporter", *common, "--tls-cert", str(cert),
                       "--tls-key", str(key), "--basic-auth-user", "prometheus",
                       "--basic-auth-password-file", str(self.password_file)]
        self.log = (folder / "exporter.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def scrape_config(exporters: list[ExporterProcess], auth: bool = True) -> dict[str, Any]:
    """One job, one target per exporter (they share the certificate and the credentials)."""
    config: dict[str, Any] = {
        "job_name": JOB, "scheme": "https", "scrape_interval": "1s", "scrape_timeout": "900ms",
        "tls_config": {"ca_file": str(exporters[0].cert)},
        "static_configs": [{"targets": [e.instance for e in exporters]}],
    }
    if auth:
        config["basic_auth"] = {"username": "prometheus", "password_file": str(exporters[0].password_file)}
    return config


@dataclass
class Fleet:
    prometheus: Prometheus
    a: ExporterProcess
    b: ExporterProcess


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Store A (SQLite or PostgreSQL) with a known history, store B (a second SQLite file) with a
    busier one; an exporter process for each; Prometheus scraping both with the rules."""
    binary = require_binary("prometheus")
    require_binary("openssl")
    cert, key = self_signed_cert(tmp_path)
    b_url = str(tmp_path / "b" / "store.db")
    (tmp_path / "b").mkdir()
    breach_some_thresholds(db_url)
    busier_history(b_url)
    exporters = [ExporterProcess(db_url, tmp_path / "a", cert, key),
                 ExporterProcess(b_url, tmp_path / "b", cert, key, web_config=True, env=B_ENV)]
    prometheus = None
    try:
        prometheus = Prometheus(binary, tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(fast_rules(tmp_path))],
            "scrape_configs": [scrape_config(exporters)],
        })
        yield Fleet(prometheus, *exporters)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for exporter in exporters:
            exporter.stop()


def sample_values(prometheus: Prometheus, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in prometheus.query(expr)]


def by_instance(prometheus: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in prometheus.query(expr)}


def firing(prometheus: Prometheus, instance: str) -> set[str]:
    return {r["metric"]["alertname"] for r in prometheus.query(f'ALERTS{{alertstate="firing", instance="{instance}"}}')}


def grafana_regex(values: list[str]) -> str:
    """What Grafana's Prometheus data source writes for a multi-value variable inside a regex
    matcher: each value regex-escaped (the backslash doubled for the PromQL string), several as
    an alternation; All (without a custom all value) is every value the variable found."""
    escaped = [re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\"))
               for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


@dataclass(frozen=True)
class PanelQuery:
    title: str
    ref: str
    expr: str


def panel_queries(jobs: list[str], instances: list[str]) -> list[PanelQuery]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in {**GRAFANA_VARIABLES, "$job": grafana_regex(jobs),
                                    "$instance": grafana_regex(instances)}.items():
                expr = expr.replace(variable, value)
            assert not re.search(r"\$\w", expr), f"panel {panel['title']!r}: unresolved variable in {expr}"
            queries.append(PanelQuery(panel["title"], target["refId"], expr))
    return queries


def variable_values(prometheus: Prometheus, name: str, jobs: list[str] | None = None) -> list[str]:
    """A ``label_values(leasestore_up{...}, name)`` variable, asked as Grafana asks it."""
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    promql = variables[name]["query"]["query"]
    match = re.fullmatch(r"label_values\((\w+(?:\{.*\})?), (\w+)\)", promql)
    assert match and match.group(2) == name, promql
    selector = match.group(1).replace("$job", grafana_regex(jobs or []))
    return sorted(prometheus.api(f"label/{name}/values", **{"match[]": selector}))


def store_expectations(url: str, env: dict[str, str]) -> dict[str, float]:
    store = LeaseStore(url)
    try:
        report = compute_metrics(store, env=env)
        expected = {m.gauge: report[m.key].value for m in METRICS}
        expected.update({m.threshold_gauge: report[m.key].threshold for m in METRICS})
    finally:
        store.close()
    return expected


@pytest.mark.prometheus
@pytest.mark.slow
def test_each_panel_separates_two_stores(fleet: Fleet) -> None:
    prometheus, a, b = fleet.prometheus, fleet.a, fleet.b
    instances = sorted([a.instance, b.instance])
    # Enough 1 s scrapes of both for every rate() window of the dashboard to hold two samples.
    prometheus.wait_for(
        lambda: len(prometheus.query(f'count_over_time(up{{job="{JOB}"}}[30s]) >= 5')) == 2 or None,
        timeout=40, what="five scrapes of each exporter")
    assert by_instance(prometheus, f'up{{job="{JOB}"}}') == {i: 1.0 for i in instances}, \
        "Prometheus could not scrape both over TLS+auth (flags and web config file)"
    assert by_instance(prometheus, "leasestore_up") == {i: 1.0 for i in instances}

    # Each store's gauges carry what its own history says, thresholds what its exporter's env says.
    expected = {a.instance: store_expectations(a.db_url, {}), b.instance: store_expectations(b.db_url, B_ENV)}
    assert {gauge: expected[a.instance][gauge] for gauge in EXPECTED} == EXPECTED
    for metric in METRICS:
        for gauge in (metric.gauge, metric.threshold_gauge):
            assert by_instance(prometheus, gauge) == {i: expected[i][gauge] for i in instances}, gauge

    # Each store fires its own alerts (both breach the same thresholds), labelled with its instance.
    for instance in (a.instance, b.instance):
        prometheus.wait_for(lambda i=instance: firing(prometheus, i) == FIRING or None, timeout=20,
                            what=f"exactly {sorted(FIRING)} firing for {instance} "
                                 f"(now {sorted(firing(prometheus, instance))})")
    rules = [r for group in prometheus.api("rules")["groups"] for r in group["rules"]]
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]

    # The variables list the job once and both instances.
    assert variable_values(prometheus, "job") == [JOB]
    assert variable_values(prometheus, "instance", [JOB]) == instances

    # One instance selected: every panel query returns data, and only that instance's.
    results: dict[str, dict[tuple[str, str], dict[str, float]]] = {}
    for exporter in (a, b):
        results[exporter.instance] = {}
        for q in panel_queries([JOB], [exporter.instance]):
            rows = prometheus.query(q.expr)
            assert rows, f"panel {q.title!r} ({q.ref}): no data for {exporter.instance}: {q.expr}"
            for row in rows:
                labels = row["metric"]
                if q.title == "Firing alerts" and "instance" not in labels:
                    continue  # an alert about the whole job (none fires here)
                assert (labels.get("job"), labels.get("instance")) == (JOB, exporter.instance), \
                    f"panel {q.title!r} ({q.ref}) with instance {exporter.instance} returned {labels}: {q.expr}"
            results[exporter.instance][(q.title, q.ref)] = {
                json.dumps({k: v for k, v in sorted(row["metric"].items()) if k not in ("job", "instance")}):
                float(row["value"][1]) for row in rows}

    # The health panels show each store's own values; where the stores differ, so do the panels.
    for metric in METRICS:
        for ref, gauge in (("A", metric.gauge), ("B", metric.threshold_gauge)):
            for instance in instances:
                assert list(results[instance][(metric.key, ref)].values()) == [expected[instance][gauge]], \
                    (metric.key, ref, instance)
    differing = [(m.key, "A") for m in METRICS if expected[a.instance][m.gauge] != expected[b.instance][m.gauge]]
    differing += [(m.key, "B") for m in METRICS
                  if expected[a.instance][m.threshold_gauge] != expected[b.instance][m.threshold_gauge]]
    differing += [("Tasks by status", "A"), ("Active leases by queue", "A")]
    assert ("deadLettersOpen", "A") in differing and ("lockConflictEvents", "B") in differing
    for key in differing:
        assert results[a.instance][key] != results[b.instance][key], key
    assert '{"queue": "index"}' in results[b.instance][("Active leases by queue", "A")]
    assert '{"queue": "index"}' not in results[a.instance][("Active leases by queue", "A")]

    # All selected: both stores side by side in every panel, never summed into one series.
    for q in panel_queries([JOB], instances):
        seen = {row["metric"].get("instance") for row in prometheus.query(q.expr)}
        assert seen == set(instances), f"panel {q.title!r} ({q.ref}) with All: {seen}: {q.expr}"
    # A job that matches nothing empties every panel: the job filter is on every selector.
    for q in panel_queries(["nothing"], instances):
        assert not prometheus.query(q.expr), f"panel {q.title!r} ({q.ref}) ignores $job: {q.expr}"


@pytest.mark.prometheus
def test_unauthenticated_scrape_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    """The same exporter processes answer 401 without the password: Prometheus's up is 0."""
    binary = require_binary("prometheus")
    require_binary("openssl")
    cert, key = self_signed_cert(tmp_path)
    exporters = [ExporterProcess(sqlite_url, tmp_path / "a", cert, key),
                 ExporterProcess(sqlite_url, tmp_path / "b", cert, key, web_config=True)]
    prometheus = Prometheus(binary, tmp_path / "prometheus", {
        "global": {"scrape_interval": "1s"}, "scrape_configs": [scrape_config(exporters, auth=False)]})
    try:
        prometheus.wait_for(lambda: len(prometheus.query(f'up{{job="{JOB}"}}')) == 2 or None,
                            timeout=20, what="a scrape attempt of each")
        assert sample_values(prometheus, f'up{{job="{JOB}"}}') == [0.0, 0.0]
        targets = prometheus.api("targets")["activeTargets"]
        assert len(targets) == 2 and all("401" in t["lastError"] for t in targets), targets
    finally:
        prometheus.stop()
        for exporter in exporters:
            exporter.stop()
