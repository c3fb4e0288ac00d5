"""The exporter's collector and HTTP endpoint, against real databases."""

from __future__ import annotations

import base64
import random
import ssl
import uuid
import subprocess
import urllib.error
import urllib.request

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import StoreCollector
from exporter.server import BasicAuth, Exporter, TLSFiles, main
from leasestore import NO_BACKOFF, LeaseStore
from leasestore.errors import ConfigurationError
from leasestore.metrics import METRICS, compute_metrics
from tests.conftest import PG_DSN, require_binary
from tests.prometheus import free_port, self_signed_cert
from tests.scenarios import EXPECTED, breach_some_thresholds


def scrape(collector: StoreCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def test_gauges_equal_the_cli_metrics(db_url: str) -> None:
    """One definition: the exporter's seven gauges equal compute_metrics for the same window."""
    breach_some_thresholds(db_url)
    collector = StoreCollector(db_url, window_minutes=60)
    registry = scrape(collector)
    store = LeaseStore(db_url, init=False)
    report = compute_metrics(store, 60)
    for metric in METRICS:
        value = registry.get_sample_value(metric.gauge)
        assert value == report[metric.key].value == EXPECTED[metric.gauge], metric.gauge
        assert registry.get_sample_value(metric.threshold_gauge) == report[metric.key].threshold
    assert registry.get_sample_value("leasestore_up") == 1
    assert registry.get_sample_value("leasestore_tasks", {"queue": "mail", "status": "dead"}) == 2
    assert registry.get_sample_value("leasestore_tasks", {"queue": "mail", "status": "leased"}) == 0
    assert registry.get_sample_value("leasestore_active_leases", {"queue": "crawl"}) == 1
    assert registry.get_sample_value("leasestore_oldest_lease_age_seconds", {"queue": "crawl"}) > 0
    assert registry.get_sample_value("leasestore_events_total", {"kind": "dead_lettered"}) == 2
    assert registry.get_sample_value("leasestore_stale_recoveries_total") == 1
    # counters only grow, and count new rows on the next scrape
    task = store.enqueue("mail").task_id
    store.release_task(store.claim_task(task_id=task, owner="a").lease, "done")
    assert registry.get_sample_value("leasestore_events_total", {"kind": "released"}) == 1
    assert registry.get_sample_value("leasestore_events_total", {"kind": "enqueued"}) == 6
    store.close()
    collector.close()


def test_thresholds_follow_the_environment(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """METRICS_THRESHOLD_* (alias included) become the *_threshold gauges the alert rules compare against."""
    breach_some_thresholds(sqlite_url)
    monkeypatch.setenv("METRICS_THRESHOLD_DEAD_LETTERS_OPEN", "7")
    monkeypatch.setenv("METRICS_THRESHOLD_STALE_RECOVERY_FAILURE_RATE", "0.5")
    registry = scrape(StoreCollector(sqlite_url))
    assert registry.get_sample_value("leasestore_dead_letters_open_threshold") == 7
    assert registry.get_sample_value("leasestore_stale_recovery_failure_ratio_threshold") == 0.5


def test_queue_labels_are_bounded(sqlite_url: str) -> None:
    """Hundreds of queues and unique owners never become hundreds of label values."""
    store = LeaseStore(sqlite_url)
    for i in range(80):
        tid = store.enqueue(f"queue-{i:03d}").task_id
        store.claim_task(task_id=tid, owner=f"owner-{i}")
    registry = scrape(StoreCollector(sqlite_url))
    queues = {s.labels["queue"] for f in registry.collect() if f.name == "leasestore_tasks" for s in f.samples}
    assert len(queues) == 51 and "other" in queues
    assert registry.get_sample_value("leasestore_active_leases", {"queue": "other"}) == 30
    text = "".join(str(s) for f in registry.collect() for s in f.samples)
    assert "owner-" not in text
    store.close()


def test_scrape_survives_a_missing_database(tmp_path) -> None:
    """A store that cannot be read answers with up=0 and a rising error counter."""
    collector = StoreCollector(str(tmp_path / "nothing-here.db"))
    registry = scrape(collector)
    assert registry.get_sample_value("leasestore_up") == 0
    assert registry.get_sample_value("leasestore_scrape_errors_total") == 2  # get_sample_value scrapes twice
    assert registry.get_sample_value("leasestore_dead_letters_open_threshold") == 2
    assert not (tmp_path / "nothing-here.db").exists()


def test_http_endpoints_and_promtool_lint(sqlite_url: str) -> None:
    """Landing page links /metrics; the exposition passes `promtool check metrics`."""
    promtool = require_binary("promtool")
    breach_some_thresholds(sqlite_url)
    exporter = Exporter(sqlite_url, port=0).start()
    base = f"http://127.0.0.1:{exporter.port}"
    try:
        landing = urllib.request.urlopen(base + "/").read().decode()
        assert 'href="/metrics"' in landing
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/nope")
    finally:
        exporter.stop()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {m.gauge for m in METRICS} <= names and "process_cpu_seconds" in names
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_refuses_public_bind_without_insecure(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """/metrics is not served on a non-loopback address unless asked for explicitly."""
    with pytest.raises(ConfigurationError):
        Exporter(sqlite_url, host="0.0.0.0", port=0)
    assert main(["--db", sqlite_url, "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing" in capsys.readouterr().err
    Exporter(sqlite_url, host="0.0.0.0", port=0, insecure=True).stop()


def test_tls_and_basic_auth(sqlite_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """With TLS and basic auth a non-loopback bind is allowed; every path needs the password."""
    require_binary("openssl")
    breach_some_thresholds(sqlite_url)
    cert, key = self_signed_cert(tmp_path)
    exporter = Exporter(sqlite_url, host="0.0.0.0", port=0, tls=TLSFiles(str(cert), str(key)),
                        auth=BasicAuth.of("prometheus", "s3cret")).start()
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{exporter.port}/metrics"

    def get(user: str | None, password: str = "") -> int:
        request = urllib.request.Request(url)
        if user is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as resp:
                assert b"leasestore_dead_letters_open 2.0" in resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            assert exc.headers["WWW-Authenticate"] == 'Basic realm="leasestore"'
            return exc.code

    try:
        assert get("prometheus", "s3cret") == 200
        assert get(None) == 401
        assert get("prometheus", "wrong") == 401
        assert get("someone", "s3cret") == 401
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
        assert get("prometheus", "s3cret") == 200  # a bad client did not break the server
    finally:
        exporter.stop()

    # TLS alone, or auth alone, is not enough off loopback.
    with pytest.raises(ConfigurationError, match="without TLS and basic auth"):
        Exporter(sqlite_url, host="0.0.0.0", port=0, tls=TLSFiles(str(cert), str(key)))
    # The CLI: the password comes from the environment or a file, never a flag.
    monkeypatch.delenv("LEASESTORE_EXPORTER_PASSWORD", raising=False)
    assert main(["--db", sqlite_url, "--port", "0", "--basic-auth-user", "prometheus"]) == 2
    assert main(["--db", sqlite_url, "--port", "0", "--tls-cert", str(cert)]) == 2
    assert main(["--db", sqlite_url, "--port", "0", "--tls-cert", str(key), "--tls-key", str(cert)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "LEASESTORE_EXPORTER_PASSWORD" in lines[0] and "go together" in lines[1] and "TLS" in lines[2]


def test_task_counts_from_the_log_equal_the_table(db_url: str) -> None:
    """leasestore_tasks is derived from the audit log's increments; it must equal a full
    count of the tasks table after every kind of state change, old rows and new."""
    rng = random.Random(7)
    # History written two minutes in the past settles under the counter's watermark;
    # what follows is counted as unsettled rows. Both paths must agree with the table.
    past = LeaseStore(db_url, retry_policy=NO_BACKOFF, clock_offset=-120.0)
    now = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    collector = StoreCollector(db_url)
    for round_, store in enumerate((past, now, now)):
        for i in range(30):
            store.enqueue(rng.choice(["a", "b", "c"]), task_id=f"r{round_}-{i}", max_attempts=2)
        for _ in range(40):
            result = store.claim_task(rng.choice(["a", "b", "c"]), f"agent-{rng.randrange(5)}", ttl=60,
                                      additional=True)
            if result.lease is None:
                continue
            action = rng.random()
            if action < 0.4:
                store.release_task(result.lease, "done")
            elif action < 0.8:
                store.release_task(result.lease, "failed", "boom")
            elif action < 0.9:
                store.revoke_lease(result.lease.task_id)
        for letter in store.list_dead_letters()[:2]:
            store.requeue_dead_letter(letter.id)
        for letter in store.list_dead_letters()[:1]:
            store.resolve_dead_letter(letter.id, "won't fix")
        registry = scrape(collector)
        exported = {(s.labels["queue"], s.labels["status"]): s.value
                    for f in registry.collect() if f.name == "leasestore_tasks" for s in f.samples}
        actual = {(t.queue, t.status): 0.0 for t in store.list_tasks(limit=10_000)}
        for t in store.list_tasks(limit=10_000):
            actual[(t.queue, t.status)] += 1
        assert {k: v for k, v in exported.items() if v} == actual, f"round {round_}"
    collector.close()
    past.close()
    now.close()


def test_scrape_survives_server_loss(pg_url: str) -> None:
    """Connections killed by the server are replaced; an unreachable server is up=0, not a failed scrape."""
    breach_some_thresholds(pg_url)
    name = "exporter-" + uuid.uuid4().hex[:8]
    collector = StoreCollector(f"{pg_url}&application_name={name}")
    registry = scrape(collector)
    assert registry.get_sample_value("leasestore_up") == 1
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s", (name,)).fetchone()
    assert killed is not None and killed[0] >= 1
    assert registry.get_sample_value("leasestore_up") == 1
    assert registry.get_sample_value("leasestore_dead_letters_open") == 2
    collector.close()

    closed_port = free_port()  # nothing listens there
    down = StoreCollector(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port}/test?connect_timeout=2")
    registry = scrape(down)
    assert registry.get_sample_value("leasestore_up") == 0
    assert registry.get_sample_value("leasestore_scrape_errors_total") == 2
    assert registry.get_sample_value("leasestore_dead_letters_open_threshold") == 2
    down.close()


@pytest.mark.parametrize("argv", [["--port", "99999"], ["--port", "http"], ["--window", "-5"], ["--bogus"]])
def test_console_script_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
