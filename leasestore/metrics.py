"""The seven health metrics: name, help, threshold and query, in one place.

``leasestore metrics`` and the exporter both read them through
:func:`compute_metrics`, so the CLI and Prometheus always agree. Every value is
counted from the audit tables over a window ending at the database clock's
"now"; ``deadLettersOpen`` is a current count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors
from .db import queries as q
from .models import EventKind, LockOutcome
from .settings import read_threshold

if TYPE_CHECKING:
    from .store import LeaseStore

DEFAULT_WINDOW_MINUTES = 60.0
MAX_WINDOW_MINUTES = 366 * 24 * 60.0


@dataclass(frozen=True)
class MetricDefinition:
    key: str  # the seed's name
    gauge: str  # the Prometheus gauge
    help: str
    threshold_env: tuple[str, ...]  # suffixes after METRICS_THRESHOLD_, first set wins
    default_threshold: float
    windowed: bool = True

    @property
    def threshold_gauge(self) -> str:
        return f"{self.gauge}_threshold"

    def threshold(self, env: Mapping[str, str] | None = None) -> float:
        return read_threshold(self.threshold_env, self.default_threshold, env)


METRICS: tuple[MetricDefinition, ...] = (
    MetricDefinition("retryAttempts", "leasestore_retry_attempts",
                     "Failed releases scheduled for another attempt in the window.",
                     ("RETRY_ATTEMPTS",), 20),
    MetricDefinition("retryLimitReached", "leasestore_retry_limit_reached",
                     "Tasks dead-lettered at their retry limit in the window.",
                     ("RETRY_LIMIT_REACHED",), 1),
    MetricDefinition("lockExpired", "leasestore_lock_expired",
                     "Expired leases taken over or recovered in the window.",
                     ("LOCK_EXPIRED",), 3),
    MetricDefinition("duplicateSuppressed", "leasestore_duplicate_suppressed",
                     "Duplicate claims answered with the existing lease in the window.",
                     ("DUPLICATE_SUPPRESSED",), 5),
    MetricDefinition("staleRecoveryFailureRate", "leasestore_stale_recovery_failure_ratio",
                     "Failed / attempted stale-lease recoveries in the window (0 when none).",
                     ("STALE_FAILURE_RATE", "STALE_RECOVERY_FAILURE_RATE"), 0.15),
    MetricDefinition("deadLettersOpen", "leasestore_dead_letters_open",
                     "Dead letters open now (not windowed).",
                     ("DEAD_LETTERS_OPEN",), 2, windowed=False),
    MetricDefinition("lockConflictEvents", "leasestore_lock_conflict_events",
                     "Lock conflict events (busy claims, stale-token writes) in the window.",
                     ("LOCK_CONFLICT_EVENTS",), 220),
)

BY_KEY = {m.key: m for m in METRICS}

_EVENT_KINDS = (EventKind.RETRY_SCHEDULED, EventKind.DEAD_LETTERED, EventKind.TAKEN_OVER, EventKind.RECOVERED)
_LOCK_OUTCOMES = (LockOutcome.DUPLICATE, LockOutcome.BUSY, LockOutcome.CONFLICT, LockOutcome.RECOVERED,
                  LockOutcome.RECOVER_DEAD_LETTERED, LockOutcome.RECOVER_FAILED)

EVENT_COUNTS = (
    "SELECT kind, reason, COUNT(*) FROM event_log WHERE ts >= :since AND kind IN ("
    + ", ".join(f"'{k.value}'" for k in _EVENT_KINDS) + ") GROUP BY kind, reason"
)
LOCK_COUNTS = (
    "SELECT outcome, COUNT(*) FROM lock_events WHERE ts >= :since AND outcome IN ("
    + ", ".join(f"'{o.value}'" for o in _LOCK_OUTCOMES) + ") GROUP BY outcome"
)
OPEN_DEAD_LETTERS = "SELECT COUNT(*) FROM dead_letters WHERE status = 'open'"


@dataclass(frozen=True)
class MetricValue:
    definition: MetricDefinition
    value: float
    threshold: float

    @property
    def alert(self) -> bool:
        """At or above the threshold is in alert."""
        return self.value >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.definition.key, "gauge": self.definition.gauge, "value": self.value,
                "threshold": self.threshold, "alert": self.alert}


@dataclass(frozen=True)
class MetricsReport:
    window_minutes: float
    now: float
    values: tuple[MetricValue, ...]
    stale_recoveries: int
    stale_recovery_failures: int

    @property
    def alert(self) -> bool:
        return any(v.alert for v in self.values)

    def __getitem__(self, key: str) -> MetricValue:
        for value in self.values:
            if value.definition.key == key:
                return value
        raise KeyError(key)

    def as_dict(self) -> dict[str, Any]:
        return {"window_minutes": self.window_minutes, "now": self.now,
                "metrics": [v.as_dict() for v in self.values], "alert": self.alert,
                "METRICS_ALERT": int(self.alert)}


def validate_window(window_minutes: Any) -> float:
    if isinstance(window_minutes, bool) or not isinstance(window_minutes, (int, float)):
        raise errors.InvalidArgument("window must be a number of minutes")
    window = float(window_minutes)
    if not math.isfinite(window) or not 0 < window <= MAX_WINDOW_MINUTES:
        raise errors.InvalidArgument(f"window must be between 0 and {MAX_WINDOW_MINUTES:g} minutes")
    return window


def raw_counts(cur: Any, dialect: Any, since: float) -> dict[str, float]:
    """The seven values from the audit tables, in one read snapshot."""
    events: dict[tuple[str, str | None], int] = {}
    for kind, reason, count in dialect.fetchall(cur, EVENT_COUNTS, {"since": since}):
        events[(kind, reason)] = int(count)
    locks = {outcome: int(count) for outcome, count in dialect.fetchall(cur, LOCK_COUNTS, {"since": since})}
    open_dead = int(dialect.fetchone(cur, OPEN_DEAD_LETTERS)[0])

    def kind_total(kind: EventKind) -> int:
        return sum(n for (k, _r), n in events.items() if k == kind.value)

    recovered = locks.get(LockOutcome.RECOVERED.value, 0) + locks.get(LockOutcome.RECOVER_DEAD_LETTERED.value, 0)
    failed = locks.get(LockOutcome.RECOVER_FAILED.value, 0)
    attempted = recovered + failed
    return {
        "retryAttempts": kind_total(EventKind.RETRY_SCHEDULED),
        "retryLimitReached": kind_total(EventKind.DEAD_LETTERED),
        "lockExpired": kind_total(EventKind.TAKEN_OVER) + kind_total(EventKind.RECOVERED)
        + events.get((EventKind.DEAD_LETTERED.value, "lease_expired"), 0),
        "duplicateSuppressed": locks.get(LockOutcome.DUPLICATE.value, 0),
        "staleRecoveryFailureRate": failed / attempted if attempted else 0.0,
        "deadLettersOpen": open_dead,
        "lockConflictEvents": locks.get(LockOutcome.BUSY.value, 0) + locks.get(LockOutcome.CONFLICT.value, 0),
        "_staleRecoveries": attempted,
        "_staleRecoveryFailures": failed,
    }


def compute_metrics(store: LeaseStore, window_minutes: float = DEFAULT_WINDOW_MINUTES,
                    env: Mapping[str, str] | None = None) -> MetricsReport:
    """Compute the seven metrics over the last ``window_minutes`` (database clock)."""
    window = validate_window(window_minutes)
    thresholds = {m.key: m.threshold(env) for m in METRICS}
    dialect = store.database.dialect

    def body(cur: Any, now: float) -> tuple[float, dict[str, float]]:
        return now, raw_counts(cur, dialect, now - window * 60.0)

    now, counts = store._read(body)
    values = tuple(MetricValue(m, float(counts[m.key]), thresholds[m.key]) for m in METRICS)
    return MetricsReport(window, now, values, int(counts["_staleRecoveries"]),
                         int(counts["_staleRecoveryFailures"]))


def record_alerts(store: LeaseStore, report: MetricsReport) -> int:
    """Write one ``alerts`` row per metric in alert; return how many."""
    breached = [v for v in report.values if v.alert]
    if not breached:
        return 0

    def body(cur: Any, now: float) -> int:
        for value in breached:
            store.database.dialect.execute(cur, q.INSERT_ALERT, {
                "now": now, "metric": value.definition.key, "value": value.value,
                "threshold": value.threshold, "window_minutes": report.window_minutes})
        return len(breached)

    return store._write(body)
