"""Writes leasestore.rules.test.yml: three promtool cases per alert and a few more.

Windowed alerts also get a case where the exporter counts over another window than
the rules (silent), and LeaseStoreMetricsWindowMismatch its own cases.

The expected annotations are rendered here the way Prometheus renders them, so
the test file stays in step with the rules: run this after editing the rules.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from leasestore.metrics import METRICS

HERE = Path(__file__).parent
INSTANCE = {"job": "leasestore", "instance": "localhost:10464"}
SEED = {m.gauge: m.default_threshold for m in METRICS}  # the seed's default thresholds
BREACH_FROM_MINUTE = 11
WINDOW_GAUGE = "leasestore_metrics_window_seconds"


def minutes(duration: str) -> int:
    assert duration.endswith("m"), duration
    return int(duration[:-1])


def series(name: str, values: str) -> dict:
    labels = ",".join(f'{k}="{v}"' for k, v in INSTANCE.items())
    return {"series": f"{name}{{{labels}}}", "values": values}


def render(text: str, value: float) -> str:
    shown = f"{value * 100:g}%" if "humanizePercentage" in text else f"{value:g}"
    for template in ("{{ $value | humanizePercentage }}", "{{ $value }}"):
        text = text.replace(template, shown)
    return text.replace("{{ $labels.instance }}", INSTANCE["instance"])


def expected(rule: dict, value: float) -> dict:
    return {"exp_labels": {**INSTANCE, **rule["labels"]},
            "exp_annotations": {k: render(v, value) for k, v in rule["annotations"].items()}}


def rule_window(rule: dict) -> float | None:
    """The window (seconds) a rule requires of the exporter, None if it is not windowed."""
    match = re.search(WINDOW_GAUGE + r"\s*[!=]=\s*([0-9.e+-]+)", rule["expr"])
    return float(match.group(1)) if match else None


def number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def seed_alert_tests(rule: dict) -> list[dict]:
    gauge = rule["expr"].split(" >= ")[0]
    threshold = SEED[gauge]
    below = threshold - (1 if float(threshold).is_integer() else 0.05)
    hold = minutes(rule["for"])
    values = f"{below}x{BREACH_FROM_MINUTE - 1} {threshold}x{BREACH_FROM_MINUTE + hold + 10}"
    alert = rule["alert"]
    window = rule_window(rule)
    window_series = [series(WINDOW_GAUGE, f"{number(window)}x60")] if window is not None else []
    tests = [{
        "interval": "1m",
        "input_series": [series(gauge, values), series(f"{gauge}_threshold", f"{threshold}x60"), *window_series],
        "alert_rule_test": [
            # below the threshold: silent
            {"eval_time": f"{BREACH_FROM_MINUTE - 2}m", "alertname": alert, "exp_alerts": []},
            # at the threshold for less than `for`: pending, not firing
            {"eval_time": f"{BREACH_FROM_MINUTE - 1 + hold - 1}m", "alertname": alert, "exp_alerts": []},
            # at the threshold long enough: firing
            {"eval_time": f"{BREACH_FROM_MINUTE + hold + 1}m", "alertname": alert,
             "exp_alerts": [expected(rule, threshold)]},
        ],
    }, {
        # an operator raised the threshold (METRICS_THRESHOLD_*): the same value stays silent
        "interval": "1m",
        "input_series": [series(gauge, f"{threshold}x60"), series(f"{gauge}_threshold", f"{threshold * 10}x60"),
                         *window_series],
        "alert_rule_test": [{"eval_time": "40m", "alertname": alert, "exp_alerts": []}],
    }]
    if window is not None:
        # the exporter counts over half the rules' window: the same value means something else, so silent
        tests.append({
            "interval": "1m",
            "input_series": [series(gauge, f"{threshold * 10}x60"), series(f"{gauge}_threshold", f"{threshold}x60"),
                             series(WINDOW_GAUGE, f"{number(window / 2)}x60")],
            "alert_rule_test": [{"eval_time": "40m", "alertname": alert, "exp_alerts": []}],
        })
    return tests


def window_mismatch_tests(rule: dict) -> list[dict]:
    window = rule_window(rule)
    assert window is not None
    hold = minutes(rule["for"])
    alert = rule["alert"]
    return [{
        "interval": "1m",
        "input_series": [series(WINDOW_GAUGE, f"{number(window / 2)}x60")],
        "alert_rule_test": [
            {"eval_time": f"{hold - 1}m", "alertname": alert, "exp_alerts": []},
            {"eval_time": f"{hold + 1}m", "alertname": alert, "exp_alerts": [expected(rule, window / 2)]},
        ],
    }, {
        "interval": "1m",
        "input_series": [series(WINDOW_GAUGE, f"{number(window)}x60")],
        "alert_rule_test": [{"eval_time": "40m", "alertname": alert, "exp_alerts": []}],
    }]


def health_tests(rules: dict[str, dict]) -> list[dict]:
    down, unreachable = rules["LeaseStoreExporterDown"], rules["LeaseStoreUnreachable"]
    return [{
        "interval": "1m",
        "input_series": [series("up", "1x10 0x20"), series("leasestore_up", "1x5 0x20")],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "LeaseStoreUnreachable", "exp_alerts": []},
            {"eval_time": "7m", "alertname": "LeaseStoreUnreachable", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "LeaseStoreUnreachable", "exp_alerts": [expected(unreachable, 0)]},
            {"eval_time": "9m", "alertname": "LeaseStoreExporterDown", "exp_alerts": []},
            {"eval_time": "12m", "alertname": "LeaseStoreExporterDown", "exp_alerts": []},
            {"eval_time": "14m", "alertname": "LeaseStoreExporterDown", "exp_alerts": [expected(down, 0)]},
        ],
    }, {
        # no scrape target at all
        "interval": "1m",
        "input_series": [{"series": 'up{job="other"}', "values": "1x10"}],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "LeaseStoreExporterDown", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "LeaseStoreExporterDown", "exp_alerts": [{
                "exp_labels": {"job": "leasestore", **down["labels"]},
                "exp_annotations": {k: v.replace("{{ $labels.instance }}", "")
                                    for k, v in down["annotations"].items()}}]},
        ],
    }]


def main() -> None:
    rules_file = HERE / "leasestore.rules.yml"
    rules = {r["alert"]: r for r in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]}
    tests = [t for rule in rules.values() if " >= " in rule["expr"] for t in seed_alert_tests(rule)]
    tests += window_mismatch_tests(rules["LeaseStoreMetricsWindowMismatch"])
    tests += health_tests(rules)
    doc = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests}
    header = "# Generated by render_tests.py from leasestore.rules.yml; run: promtool test rules this-file\n"
    (HERE / "leasestore.rules.test.yml").write_text(header + yaml.safe_dump(doc, sort_keys=False, width=200))


if __name__ == "__main__":
    main()
