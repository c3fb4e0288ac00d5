"""Alert rules, their promtool unit tests, the example scrape and Alertmanager configs,
render_rules.py's settings and the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from exporter.rules.render_rules import render
from leasestore.metrics import DEFAULT_WINDOW_MINUTES, METRICS
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "exporter" / "rules"
RULES = RULES_DIR / "leasestore.rules.yml"
RULE_TESTS = RULES_DIR / "leasestore.rules.test.yml"
RENDER_RULES = RULES_DIR / "render_rules.py"
AM_EXAMPLE = ROOT / "exporter" / "alertmanager.example.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
WINDOW_CHECK = "leasestore_metrics_window_seconds == "


def rules_by_name() -> dict[str, dict]:
    return {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_pass() -> None:
    """Each seed alert fires at its threshold after `for`, and stays silent below or before."""
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule whose threshold comparison is wrong fails them."""
    broken = RULES.read_text().replace(
        "leasestore_dead_letters_open >= leasestore_dead_letters_open_threshold",
        "leasestore_dead_letters_open > leasestore_dead_letters_open_threshold")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "LeaseStoreDeadLettersOpen" in result.stdout + result.stderr


@pytest.mark.prometheus
def test_promtool_unit_tests_cover_the_window(tmp_path: Path) -> None:
    """An alert that ignored the exporter's window would fail the unit tests."""
    broken = RULES.read_text().replace(
        "leasestore_retry_limit_reached >= leasestore_retry_limit_reached_threshold\n"
        f"      and {WINDOW_CHECK}3600", "leasestore_retry_limit_reached >= leasestore_retry_limit_reached_threshold")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "LeaseStoreRetryLimitReached" in result.stdout + result.stderr


def test_rule_tests_are_rendered_from_the_current_rules(tmp_path: Path) -> None:
    """render_tests.py's output is committed: editing the rules without re-rendering fails here."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    subprocess.run([sys.executable, str(copy / "render_tests.py")], check=True, cwd=ROOT)
    assert (copy / RULE_TESTS.name).read_text() == RULE_TESTS.read_text()


def test_one_alert_per_seed_metric_with_its_threshold_gauge() -> None:
    rules = rules_by_name()
    for metric in METRICS:
        # Comparing against the exported threshold gauge is what makes METRICS_THRESHOLD_* drive the rules.
        [expr] = [r["expr"] for r in rules.values() if f"{metric.gauge} >= {metric.threshold_gauge}" in r["expr"]]
        # A windowed metric alerts only over the window written in the rule, never over whatever
        # --window the exporter was given.
        window = f"\nand {WINDOW_CHECK}{DEFAULT_WINDOW_MINUTES * 60:g}"
        assert expr == f"{metric.gauge} >= {metric.threshold_gauge}" + (window if metric.windowed else ""), expr
    assert rules["LeaseStoreMetricsWindowMismatch"]["expr"] == "leasestore_metrics_window_seconds != 3600"
    assert any("leasestore_up == 0" in r["expr"] for r in rules.values())
    assert any("absent(up{" in r["expr"] for r in rules.values())
    assert len(rules) == len(METRICS) + 3


def test_descriptions_name_the_window() -> None:
    for name, rule in rules_by_name().items():
        if WINDOW_CHECK in rule["expr"] or name == "LeaseStoreMetricsWindowMismatch":
            assert "the last 60 minutes" in rule["annotations"]["description"], name


def test_every_alert_is_annotated_and_has_a_runbook_section() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for name, rule in rules_by_name().items():
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        url = urlsplit(rule["annotations"]["runbook_url"])
        # Absolute: Alertmanager and Grafana show the link far from this repository.
        assert url.scheme == "https" and url.netloc, name
        assert url.fragment in anchors, f"{name}: no section #{url.fragment} in {RUNBOOK.name}"
    # One base for every link, so that one setting (render_rules.py --runbook-url) moves them all.
    assert len({r["annotations"]["runbook_url"].partition("#")[0] for r in rules_by_name().values()}) == 1


@pytest.mark.parametrize("minutes", [DEFAULT_WINDOW_MINUTES, 30, 0.2057613])
def test_exporter_window_is_what_rendered_rules_compare(sqlite_url: str, minutes: float) -> None:
    """The exporter's window gauge equals, as a float, the number render_rules.py writes for the same --window."""
    from prometheus_client import CollectorRegistry

    from exporter.collector import StoreCollector
    from leasestore import LeaseStore

    LeaseStore(sqlite_url).close()
    collector = StoreCollector(sqlite_url, window_minutes=minutes)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    served = registry.get_sample_value("leasestore_metrics_window_seconds")
    collector.close()
    [written] = set(re.findall(WINDOW_CHECK + r"([0-9.e+-]+)", render(RULES.read_text(), window_minutes=minutes)))
    assert served == float(written), (served, written)


def render_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RENDER_RULES), *args], cwd=cwd, capture_output=True, text=True)


def test_render_rules_without_settings_is_the_shipped_file() -> None:
    """The shipped file is render_rules.py's output for its own settings."""
    assert render_cli().stdout == RULES.read_text()
    base = rules_by_name()["LeaseStoreUnreachable"]["annotations"]["runbook_url"].partition("#")[0]
    assert render(RULES.read_text(), runbook_url=base, window_minutes=DEFAULT_WINDOW_MINUTES) == RULES.read_text()


@pytest.mark.prometheus
def test_one_setting_makes_every_runbook_url_yours(tmp_path: Path) -> None:
    url = "https://git.example.org/ops/leasestore/blob/main/docs/runbook.md"
    out = tmp_path / "leasestore.rules.yml"
    result = render_cli("--runbook-url", url, "-o", str(out))
    assert result.returncode == 0, result.stderr
    rules = {r["alert"]: r for g in yaml.safe_load(out.read_text())["groups"] for r in g["rules"]}
    assert rules.keys() == rules_by_name().keys()
    for name, rule in rules.items():
        assert rule["annotations"]["runbook_url"] == f"{url}#{name.lower()}", name
        # nothing else moved
        assert {**rule, "annotations": {}} == {**rules_by_name()[name], "annotations": {}}
    assert promtool("check", "rules", str(out)).returncode == 0
    # A relative link is what this setting exists to avoid.
    for bad in ("docs/runbook.md", "/runbook", "https://x.example/runbook#section"):
        refused = render_cli("--runbook-url", bad)
        assert refused.returncode == 2 and "absolute" in refused.stderr, bad


@pytest.mark.prometheus
def test_rendered_window_stays_consistent(tmp_path: Path) -> None:
    """--window-minutes moves every window check and description; the promtool tests
    rendered for that copy pass (the same cases, at the new window)."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    result = render_cli("--window-minutes", "30", "-o", str(copy / RULES.name))
    assert result.returncode == 0, result.stderr
    text = (copy / RULES.name).read_text()
    assert "== 3600" not in text and "!= 3600" not in text and "60 minutes" not in text
    rules = {r["alert"]: r for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    windowed = [r for r in rules.values() if WINDOW_CHECK in r["expr"]]
    assert len(windowed) == sum(m.windowed for m in METRICS)
    assert all(r["expr"].endswith(f"{WINDOW_CHECK}1800") for r in windowed)
    assert all("in the last 30 minutes" in r["annotations"]["description"] for r in windowed)
    assert rules["LeaseStoreMetricsWindowMismatch"]["expr"] == "leasestore_metrics_window_seconds != 1800"
    subprocess.run([sys.executable, str(copy / "render_tests.py")], check=True, cwd=ROOT)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=copy)
    assert result.returncode == 0, result.stdout + result.stderr
    # The exporter computes minutes * 60.0; the rule must compare against exactly that float.
    odd = 0.2057613
    assert f"leasestore_metrics_window_seconds == {odd * 60.0!r}" in render(text, window_minutes=odd)
    assert f"{odd * 60.0:g}" != f"{odd * 60.0!r}"


@pytest.mark.prometheus
def test_example_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.example.yml", cwd=ROOT / "exporter")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((ROOT / "exporter" / "prometheus.example.yml").read_text())
    assert config["scrape_configs"][0]["job_name"] == "leasestore"  # LeaseStoreExporterDown matches this job
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]


@pytest.mark.prometheus
def test_example_alertmanager_config() -> None:
    """Valid for amtool, and it routes, groups and inhibits as docs/runbook.md says
    (tests/test_alertmanager_e2e.py shows it doing so)."""
    result = subprocess.run([require_binary("amtool"), "check-config", AM_EXAMPLE.name],
                            cwd=AM_EXAMPLE.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(AM_EXAMPLE.read_text())
    [route] = config["route"]["routes"]
    assert route["matchers"] == ['alertname=~"LeaseStore.+"'] and route["receiver"] == "leasestore-tickets"
    assert route["group_by"] == ["job", "instance"]  # one group per store
    assert [(r["matchers"], r["receiver"]) for r in route["routes"]] == [(['severity="critical"'], "leasestore-pager")]
    inhibit = {(tuple(r["source_matchers"]), tuple(r["target_matchers"]), tuple(r["equal"]))
               for r in config["inhibit_rules"]}
    assert inhibit == {
        (('alertname=~"LeaseStore.+"', 'severity="critical"'), ('alertname=~"LeaseStore.+"', 'severity="warning"'),
         ("job", "instance")),
        (('alertname="LeaseStoreRetryLimitReached"',), ('alertname="LeaseStoreDeadLettersOpen"',), ("job", "instance")),
    }
    rules = rules_by_name()
    # The retry-limit alert must fire before the one it mutes, or the muted one would notify first.
    assert int(rules["LeaseStoreRetryLimitReached"]["for"][:-1]) < int(rules["LeaseStoreDeadLettersOpen"]["for"][:-1])
    assert {r["labels"]["severity"] for r in rules.values()} == {"warning", "critical"}
