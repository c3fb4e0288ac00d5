"""Alert rules, their promtool unit tests, the example scrape config and the runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from leasestore.metrics import METRICS
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "exporter" / "rules"
RULES = RULES_DIR / "leasestore.rules.yml"
RULE_TESTS = RULES_DIR / "leasestore.rules.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"


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


def test_rule_tests_are_rendered_from_the_current_rules(tmp_path: Path) -> None:
    """render_tests.py's output is committed: editing the rules without re-rendering fails here."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES_DIR, copy)
    subprocess.run([sys.executable, str(copy / "render_tests.py")], check=True, cwd=ROOT)
    assert (copy / RULE_TESTS.name).read_text() == RULE_TESTS.read_text()


def test_one_alert_per_seed_metric_with_its_threshold_gauge() -> None:
    rules = rules_by_name()
    by_expr = {r["expr"]: name for name, r in rules.items()}
    for metric in METRICS:
        # Comparing against the exported threshold gauge is what makes METRICS_THRESHOLD_* drive the rules.
        assert f"{metric.gauge} >= {metric.threshold_gauge}" in by_expr, metric.gauge
    assert any("leasestore_up == 0" in r["expr"] for r in rules.values())
    assert any("absent(up{" in r["expr"] for r in rules.values())
    assert len(rules) == len(METRICS) + 2


def test_every_alert_is_annotated_and_has_a_runbook_section() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for name, rule in rules_by_name().items():
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve(), name
        assert anchor in anchors, f"{name}: no section #{anchor} in {RUNBOOK.name}"


@pytest.mark.prometheus
def test_example_scrape_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.example.yml", cwd=ROOT / "exporter")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((ROOT / "exporter" / "prometheus.example.yml").read_text())
    assert config["scrape_configs"][0]["job_name"] == "leasestore"  # LeaseStoreExporterDown matches this job
