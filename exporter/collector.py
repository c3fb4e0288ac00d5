"""A prometheus-client collector that reads the store at scrape time.

Each scrape runs one read transaction and builds fresh metric families, so
Prometheus never sees numbers older than the scrape. The seven gauges are the
values the CLI's ``metrics`` command computes for the same window and "now"
(one definition, :func:`leasestore.metrics.seven_values`), but counted
incrementally (:class:`leasestore.metrics.ScrapeCounts`): a scrape reads the
audit rows added since the previous one, however many the window holds. When
the database cannot be read the scrape still answers: ``leasestore_up`` is 0
and ``leasestore_scrape_errors_total`` rises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from leasestore import EventKind, LeaseStore, LockOutcome
from leasestore.db.driver import Step
from leasestore.metrics import (
    METRICS,
    ScrapeCounts,
    queue_snapshot,
    tasks_by_queue_status,
    validate_window,
)

log = logging.getLogger("leasestore.exporter")


class StoreCollector(Collector):
    """Serves the seven health gauges, their thresholds and operator gauges.

    ``open_store`` opens the store it reads (default: ``LeaseStore(db,
    init=False)``); tests pass one with a frozen clock.
    """

    def __init__(self, db: str | None, window_minutes: float = 60.0,
                 env: Mapping[str, str] | None = None,
                 open_store: Callable[[], LeaseStore] | None = None) -> None:
        self._db = db
        self._open_store = open_store or (lambda: LeaseStore(self._db, init=False))
        self._window = validate_window(window_minutes)
        # Thresholds are read once: they are the exporter's configuration.
        self._thresholds = {m.key: m.threshold(env) for m in METRICS}
        self._store: LeaseStore | None = None
        self._lock = threading.Lock()  # scrapes may arrive concurrently
        self._errors = 0
        self._counts = ScrapeCounts(self._window)

    def describe(self) -> list[Metric]:
        # No describe at registration time: it would read the database.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        with self._lock:
            try:
                families = self._read()
                up = 1.0
            except Exception as exc:  # any failure becomes up=0, never a failed scrape
                log.warning("scrape failed: %s", exc)
                self._errors += 1
                self._reset()
                families, up = [], 0.0
            errors = self._errors
        yield from families
        yield from self._threshold_families()
        yield _gauge("leasestore_up", "1 if the last scrape read the store, 0 if it could not.", up)
        yield _counter("leasestore_scrape_errors", "Scrapes that could not read the store.", errors)
        yield _gauge("leasestore_scrape_duration_seconds", "Time this scrape spent reading the store.",
                     time.perf_counter() - started)

    def prime(self) -> None:
        """Total the audit log once before the first scrape, which would otherwise
        pay for every row ever written (seconds at millions of rows)."""
        with self._lock:
            try:
                self._read()
            except Exception as exc:  # the first scrape will report it
                log.warning("could not read the store at start: %s", exc)
                self._reset()

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        if self._store is not None:
            self._store.close()
        self._store = None

    def _read(self) -> list[Metric]:
        if self._store is None:
            self._store = self._open_store()
        db = self._store.database
        d = db.driver

        def body(now: float) -> Step[tuple[dict[str, float], dict[str, Any], dict[str, int], dict[str, int]]]:
            counts = yield from self._counts.read(d, now)
            tasks = tasks_by_queue_status(self._counts.transitions)
            queues = yield from queue_snapshot(d, now, tasks)
            return counts, queues, self._counts.event_kinds, self._counts.lock_outcomes

        counts, queues, events, locks = db.read(body)
        families: list[Metric] = [
            _gauge(m.gauge, m.help, float(counts[m.key])) for m in METRICS
        ]
        # The alert rules compare this with the window they are written for (== 3600).
        families.append(_gauge("leasestore_metrics_window_seconds",
                               "Window of the windowed health gauges (--window), in seconds.",
                               self._window * 60.0))
        families.append(_counter("leasestore_stale_recoveries",
                                 "Stale-lease recoveries attempted (recovered, dead-lettered or failed).",
                                 locks.get("recovered", 0) + locks.get("recover_dead_lettered", 0)
                                 + locks.get("recover_failed", 0)))
        families.append(_counter("leasestore_stale_recovery_failures",
                                 "Stale-lease recoveries that failed.", locks.get("recover_failed", 0)))
        kinds = CounterMetricFamily("leasestore_events", "Audit-log rows by kind (state changes).",
                                    labels=["kind"])
        # Every known label from the first scrape: rate() over a series that
        # appears only at its first event would miss that event.
        for kind, count in sorted(_with_zeros(events, EventKind).items()):
            kinds.add_metric([kind], count)
        families.append(kinds)
        outcomes = CounterMetricFamily("leasestore_lock_events", "Lock outcomes by kind, conflicts included.",
                                       labels=["outcome"])
        for outcome, count in sorted(_with_zeros(locks, LockOutcome).items()):
            outcomes.add_metric([outcome], count)
        families.append(outcomes)

        tasks = GaugeMetricFamily("leasestore_tasks", "Tasks by queue and status.", labels=["queue", "status"])
        leases = GaugeMetricFamily("leasestore_active_leases", "Leased tasks by queue.", labels=["queue"])
        lease_age = GaugeMetricFamily(
            "leasestore_oldest_lease_age_seconds",
            "Age of the oldest active lease, on the database clock (0 when none).", labels=["queue"])
        pending_age = GaugeMetricFamily(
            "leasestore_oldest_pending_age_seconds",
            "How long the oldest ready task has waited, on the database clock (0 when none).",
            labels=["queue"])
        for queue, snap in sorted(queues.items()):
            for status, count in sorted(snap.tasks.items()):
                tasks.add_metric([queue, status], count)
            leases.add_metric([queue], snap.active_leases)
            lease_age.add_metric([queue], snap.oldest_lease_age)
            pending_age.add_metric([queue], snap.oldest_pending_age)
        families += [tasks, leases, lease_age, pending_age]
        return families

    def _threshold_families(self) -> Iterator[Metric]:
        for m in METRICS:
            yield _gauge(m.threshold_gauge, f"Alert threshold of {m.gauge} (METRICS_THRESHOLD_{m.threshold_env[0]}).",
                         self._thresholds[m.key])


def _with_zeros(counts: Mapping[str, int], known: type[StrEnum]) -> dict[str, int]:
    return {**{member.value: 0 for member in known}, **counts}


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)
