"""End to end: one notification per incident, through a real Alertmanager.

Two stores, each with its own exporter process, scraped by one real Prometheus that
evaluates the project's rules and sends to a real Alertmanager running
exporter/alertmanager.example.yml, which delivers to a webhook receiver in this test.

- store "dead": two tasks exhaust their attempts. LeaseStoreRetryLimitReached and
  LeaseStoreDeadLettersOpen both fire; exactly one notification goes out (tickets).
- store "stale": a recovery sweep returns three expired leases and fails on a fourth.
  LeaseStoreStaleRecoveryFailing (critical) and LeaseStoreLockExpired (warning) both
  fire; only the critical one is delivered (pager).
- the conditions end (the dead letters are requeued, the row is fixed and recovered, the
  failures leave the window): each store gets one resolved notification.

The rules are the shipped ones rendered by render_rules.py with a 15 s window (the
exporters run with --window 0.25) and an absolute runbook URL; each ``for:`` is scaled
from minutes to half-seconds, which keeps their order (1m < 5m < 10m). The Alertmanager
config is the shipped one with its timers cut to seconds and the webhook URLs pointed
here; ``amtool check-config`` checks both.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.rules.render_rules import render
from leasestore import LeaseStore
from tests.conftest import require, require_binary
from tests.prometheus import (
    Alertmanager,
    Notification,
    Prometheus,
    WebhookReceiver,
    alertmanager_binary,
    free_port,
    stop_process,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "exporter" / "rules" / "leasestore.rules.yml"
AM_EXAMPLE = ROOT / "exporter" / "alertmanager.example.yml"
JOB = "leasestore"
WINDOW_MINUTES = 0.25  # the exporters' --window and the rules' window: 15 s
RUNBOOK = "https://wiki.example.org/ops/leasestore/runbook"
GROUP_WAIT, GROUP_INTERVAL = 1.0, 2.0


def rendered_rules(folder: Path) -> Path:
    """The shipped rules with a short window, an absolute runbook URL and ``for:`` in half-seconds."""
    doc = yaml.safe_load(render(RULES.read_text(), runbook_url=RUNBOOK, window_minutes=WINDOW_MINUTES))
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            minutes = re.fullmatch(r"(\d+)m", rule["for"])
            assert minutes, rule["for"]
            rule["for"] = f"{int(minutes.group(1)) * 500}ms"
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def alertmanager_config(webhook: str) -> dict[str, Any]:
    """The shipped config, its timers in seconds and its webhooks pointed at ``webhook``."""
    config: dict[str, Any] = yaml.safe_load(AM_EXAMPLE.read_text())
    config["global"]["resolve_timeout"] = "10s"
    leasestore = config["route"]["routes"][0]
    leasestore.update(group_wait=f"{GROUP_WAIT:g}s", group_interval=f"{GROUP_INTERVAL:g}s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = re.sub(r"^https?://[^/]+", webhook, hook["url"])
    return config


def amtool_check(amtool: str, path: Path) -> None:
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class Exporter:
    """``python -m leasestore exporter`` on a SQLite file, loopback, plain HTTP."""

    def __init__(self, db: Path, folder: Path) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = folder / f"exporter-{db.stem}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leasestore", "exporter", "--db", str(db), "--port", str(self.port),
             "--window", str(WINDOW_MINUTES)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(self._serving, timeout=30, what=f"the exporter on {self.target}", details=self.log_tail)

    def _serving(self) -> bool | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"exporter exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=2) as resp:
                return True if b"leasestore_up 1.0" in resp.read() else None
        except OSError:
            return None

    def log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Stack:
    def __init__(self, prometheus: Prometheus, alertmanager: Alertmanager, webhook: WebhookReceiver,
                 instances: dict[str, str]) -> None:
        self.prometheus, self.alertmanager, self.webhook = prometheus, alertmanager, webhook
        self.instances = instances  # store name -> instance label

    def notifications(self, store: str) -> list[Notification]:
        return self.webhook.received(lambda n: n.group.get("instance") == self.instances[store])

    def firing(self) -> set[tuple[str, str]]:
        """(alertname, store) of the alerts Prometheus has firing."""
        by_instance = {v: k for k, v in self.instances.items()}
        return {(r["metric"]["alertname"], by_instance.get(r["metric"].get("instance", ""), "?"))
                for r in self.prometheus.query('ALERTS{alertstate="firing"}')}

    def details(self) -> str:
        sent = "\n".join(f"{n.path} {n.status} {n.group} {n.alerts}" for n in self.webhook.received())
        return (f"notifications:\n{sent}\nfiring in Prometheus: {sorted(self.firing())}\n"
                f"alertmanager log:\n{self.alertmanager.log_tail()}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Path, Path]]:
    prometheus_bin = require_binary("prometheus")
    amtool = require_binary("amtool")
    am_bin = alertmanager_binary()
    require(am_bin is not None, "alertmanager (Debian: prometheus-alertmanager)")
    assert am_bin is not None

    dead_db, stale_db = tmp_path / "dead.db", tmp_path / "stale.db"
    for db in (dead_db, stale_db):
        LeaseStore(str(db)).close()

    amtool_check(amtool, AM_EXAMPLE)
    webhook = WebhookReceiver()
    started: list[Any] = [webhook]
    try:
        alertmanager = Alertmanager(am_bin, tmp_path / "alertmanager", alertmanager_config(webhook.url))
        started.append(alertmanager)
        amtool_check(amtool, alertmanager.config_file)
        exporters = {name: Exporter(db, tmp_path) for name, db in (("dead", dead_db), ("stale", stale_db))}
        started += exporters.values()
        prometheus = Prometheus(prometheus_bin, tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
            "rule_files": [str(rendered_rules(tmp_path))],
            "scrape_configs": [{"job_name": JOB, "scrape_interval": "1s", "scrape_timeout": "900ms",
                                "static_configs": [{"targets": [e.target for e in exporters.values()]}]}],
        })
        started.append(prometheus)
        yield Stack(prometheus, alertmanager, webhook, {n: e.target for n, e in exporters.items()}), dead_db, stale_db
    finally:
        for component in reversed(started):
            component.stop()


def dead_letter_two_tasks(db: Path) -> None:
    """A dependency is down: two single-attempt tasks fail and become dead letters."""
    store = LeaseStore(str(db))
    for name in ("mail-1", "mail-2"):
        store.enqueue("mail", task_id=name, max_attempts=1)
        lease = store.claim_task(task_id=name, owner="agent-1").lease
        assert lease is not None
        store.release_task(lease, "failed", "smtp down")
    store.close()


def requeue_dead_letters(db: Path) -> None:
    store = LeaseStore(str(db))
    for letter in store.list_dead_letters():
        store.requeue_dead_letter(letter.id)
    store.close()


def expire_four_leases(db: Path) -> None:
    """Four agents crashed holding leases (ttl 0.1 s): nothing is logged until a sweep."""
    store = LeaseStore(str(db))
    for i in range(4):
        store.enqueue("crawl", task_id=f"page-{i}")
        store.claim_task(task_id=f"page-{i}", owner=f"crashed-{i}", ttl=0.1)
    store.close()
    time.sleep(0.2)


def sweep_with_one_unwritable_row(db: Path) -> None:
    """One sweep, one transaction: three leases recovered, one row the database refuses to
    write (a trigger stands in for the cause), so its recovery fails: 1/4 failed."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER unwritable BEFORE UPDATE OF status ON tasks WHEN OLD.id = 'page-3' "
                     "BEGIN SELECT RAISE(ABORT, 'page-3 cannot be written'); END")
    conn.close()
    store = LeaseStore(str(db))
    report = store.recover_stale()
    store.close()
    assert (report.recovered, report.failed) == (3, 1), report


def fix_and_sweep(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER unwritable")
    conn.close()
    store = LeaseStore(str(db))
    report = store.recover_stale()
    store.close()
    assert (report.recovered, report.failed) == (1, 0), report


@pytest.mark.prometheus
@pytest.mark.slow
def test_one_notification_per_incident(stack: tuple[Stack, Path, Path]) -> None:
    s, dead_db, stale_db = stack
    prometheus = s.prometheus
    prometheus.wait_for(
        lambda: len(prometheus.query(f'up{{job="{JOB}"}} == 1 and leasestore_up == 1')) == 2 or None,
        timeout=20, what="both exporters scraped")
    expire_four_leases(stale_db)

    # The incidents.
    dead_letter_two_tasks(dead_db)
    sweep_with_one_unwritable_row(stale_db)

    # One notification each: the retry limit to tickets, the critical to the pager.
    first = {store: wait_for(lambda store=store: s.notifications(store) or None, timeout=30,
                             what=f"a notification for store {store}", details=s.details)[0]
             for store in ("dead", "stale")}
    assert (first["dead"].path, first["dead"].status) == ("/leasestore/tickets", "firing"), s.details()
    assert first["dead"].alerts == {"LeaseStoreRetryLimitReached": "firing"}, s.details()
    assert (first["stale"].path, first["stale"].status) == ("/leasestore/pager", "firing"), s.details()
    assert first["stale"].alerts == {"LeaseStoreStaleRecoveryFailing": "firing"}, s.details()
    # Every runbook link is absolute: the one setting render_rules.py --runbook-url reached Alertmanager.
    for notification in first.values():
        for alert in notification.body["alerts"]:
            anchor = alert["labels"]["alertname"].lower()
            assert alert["annotations"]["runbook_url"] == f"{RUNBOOK}#{anchor}"

    # The second alert of each incident fires too (DeadLettersOpen after its longer for:),
    # and Alertmanager holds it muted by the inhibit rules.
    muted = {("LeaseStoreDeadLettersOpen", "dead"), ("LeaseStoreLockExpired", "stale")}
    wait_for(lambda: muted <= s.firing() or None, timeout=30, what=f"{sorted(muted)} firing", details=s.details)
    held = {(a["labels"]["alertname"], a["labels"]["instance"]): a["status"] for a in s.alertmanager.alerts()}
    for name, store in muted:
        status = held[(name, s.instances[store])]
        assert status["state"] == "suppressed" and status["inhibitedBy"], (name, status)
    time.sleep(2 * GROUP_INTERVAL + 1)  # two more group flushes: still nothing new
    assert s.notifications("dead") == [first["dead"]], s.details()
    assert s.notifications("stale") == [first["stale"]], s.details()

    # The conditions end: the operator requeues the dead letters and fixes the row; the
    # failures leave the 15 s window. Each incident then gets one resolved notification.
    requeue_dead_letters(dead_db)
    fix_and_sweep(stale_db)
    for store in ("dead", "stale"):
        wait_for(lambda store=store: len(s.notifications(store)) >= 2 or None, timeout=45,
                 what=f"a resolved notification for store {store}", details=s.details)
    time.sleep(GROUP_INTERVAL + 0.5)  # nothing follows it
    for store, path in (("dead", "/leasestore/tickets"), ("stale", "/leasestore/pager")):
        sent = s.notifications(store)
        assert len(sent) == 2, s.details()
        resolved = sent[1]
        assert (resolved.path, resolved.status) == (path, "resolved"), s.details()
        assert set(resolved.alerts.values()) == {"resolved"}, s.details()
        assert first[store].alerts.keys() <= resolved.alerts.keys(), s.details()
    # Nothing else was ever sent (no exporter-down, no window mismatch, no other store).
    assert len(s.webhook.received()) == 4, s.details()
    assert not s.firing(), s.details()
