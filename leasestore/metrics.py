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
from .db.driver import Driver, Step
from .db.engine import Op
from .db.queries import Grouping
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


def raw_counts(d: Driver, since: float) -> Step[dict[str, float]]:
    """The seven values from the audit tables (run it inside one read snapshot)."""
    events: dict[tuple[str, str | None], int] = {}
    for kind, reason, count in (yield from d.windowed_event_counts(since)):
        events[(kind, reason)] = count
    locks = dict((yield from d.windowed_lock_counts(since)))
    open_dead = yield from d.open_dead_letter_count()

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


def metrics_op(d: Driver, window_minutes: float, env: Mapping[str, str] | None = None) -> Op[MetricsReport]:
    """The seven metrics over the last ``window_minutes`` (database clock), as an
    operation either face runs."""
    window = validate_window(window_minutes)
    thresholds = {m.key: m.threshold(env) for m in METRICS}

    def body(now: float) -> Step[MetricsReport]:
        counts = yield from raw_counts(d, now - window * 60.0)
        values = tuple(MetricValue(m, float(counts[m.key]), thresholds[m.key]) for m in METRICS)
        return MetricsReport(window, now, values, int(counts["_staleRecoveries"]),
                             int(counts["_staleRecoveryFailures"]))

    return lambda: d.read(body)


def compute_metrics(store: LeaseStore, window_minutes: float = DEFAULT_WINDOW_MINUTES,
                    env: Mapping[str, str] | None = None) -> MetricsReport:
    """Compute the seven metrics over the last ``window_minutes`` (database clock)."""
    return store.database.run(metrics_op(store.database.driver, window_minutes, env))


def record_alerts(store: LeaseStore, report: MetricsReport) -> int:
    """Write one ``alerts`` row per metric in alert; return how many."""
    breached = [v for v in report.values if v.alert]
    if not breached:
        return 0
    d = store.database.driver

    def body(now: float) -> Step[int]:
        for value in breached:
            yield from d.insert_alert(now, value.definition.key, value.value, value.threshold,
                                      report.window_minutes)
        return len(breached)

    return store.database.write(body)


# --- what operators need beside the seven (exporter) ------------------------

MAX_QUEUE_LABELS = 50
OTHER_QUEUES = "other"
KNOWN_STATUSES = ("pending", "leased", "done", "dead")

@dataclass(frozen=True)
class QueueSnapshot:
    tasks: dict[str, int]  # status -> count, every known status present
    active_leases: int
    oldest_lease_age: float  # seconds on the database clock; 0 when none
    oldest_pending_age: float  # seconds a ready task has waited; 0 when none


def tasks_by_queue_status(transitions: Mapping[tuple[str, ...], int]) -> dict[str, dict[str, int]]:
    """Tasks per queue and status, from ``event_log`` totals by (queue, from_status, to_status).

    Every state change writes one event naming both statuses (invariant 4), so a
    status holds what entered it less what left it. Counting this way costs the
    rows added since the last scrape, where ``GROUP BY`` over ``tasks`` would
    cost every task ever enqueued.
    """
    counts: dict[str, dict[str, int]] = {}
    for (queue, from_status, to_status), n in transitions.items():
        if from_status == to_status:
            continue
        per_queue = counts.setdefault(queue, {})
        if to_status is not None:
            per_queue[to_status] = per_queue.get(to_status, 0) + n
        if from_status is not None:
            per_queue[from_status] = per_queue.get(from_status, 0) - n
    return counts


def queue_snapshot(d: Driver, now: float, counts: Mapping[str, Mapping[str, int]],
                   max_queues: int = MAX_QUEUE_LABELS) -> Step[dict[str, QueueSnapshot]]:
    """Per-queue task counts (``counts``, see :func:`tasks_by_queue_status`) and lease
    ages, the busiest ``max_queues`` queues by name and the rest folded into
    ``other`` (labels must stay bounded)."""
    leases = {q: (n, oldest) for q, n, oldest in (yield from d.leases_by_queue())}
    pending = dict((yield from d.ready_pending_by_queue(now)))
    ranked = sorted(counts, key=lambda q: (-sum(counts[q].values()), q))
    keep = set(ranked[:max_queues])

    def label(queue: str) -> str:
        return queue if queue in keep else OTHER_QUEUES

    merged: dict[str, dict[str, Any]] = {}
    for queue in ranked:
        entry = merged.setdefault(label(queue), {"tasks": dict.fromkeys(KNOWN_STATUSES, 0), "leases": 0,
                                                  "oldest_lease": None, "oldest_pending": None})
        for status, count in counts[queue].items():
            entry["tasks"][status] = entry["tasks"].get(status, 0) + count
        if queue in leases:
            n, oldest = leases[queue]
            entry["leases"] += n
            entry["oldest_lease"] = min(filter(None, (entry["oldest_lease"], oldest)))
        if queue in pending:
            entry["oldest_pending"] = min(filter(None, (entry["oldest_pending"], pending[queue])))
    return {
        name: QueueSnapshot(
            tasks=e["tasks"], active_leases=e["leases"],
            oldest_lease_age=max(0.0, now - e["oldest_lease"]) if e["oldest_lease"] is not None else 0.0,
            oldest_pending_age=max(0.0, now - e["oldest_pending"]) if e["oldest_pending"] is not None else 0.0,
        )
        for name, e in merged.items()
    }


# Rows of an append-only table are counted once: a watermark remembers the
# highest id already added. Only rows older than SETTLE_SECONDS move under the
# watermark, because on PostgreSQL a transaction can commit a lower id after a
# higher one; the newer rows are counted fresh on each read.
SETTLE_SECONDS = 30.0


class AppendOnlyCounter:
    """Totals by one grouping over an append-only table, cheap at millions of rows."""

    def __init__(self, grouping: Grouping) -> None:
        self._grouping: Grouping = grouping
        self._settled: dict[tuple[Any, ...], int] = {}
        self._watermark = 0

    def read(self, d: Driver, now: float) -> Step[dict[tuple[Any, ...], int]]:
        unsettled_from = yield from d.first_unsettled_id(self._grouping, self._watermark, now - SETTLE_SECONDS)
        settle_before = unsettled_from if unsettled_from is not None else 2**62
        for *key, count, max_id in (yield from d.grouped_counts(self._grouping, self._watermark, settle_before)):
            self._settled[tuple(key)] = self._settled.get(tuple(key), 0) + int(count)
            self._watermark = max(self._watermark, int(max_id))
        totals = dict(self._settled)
        if unsettled_from is not None:
            for *key, count, _ in (yield from d.grouped_counts(self._grouping, unsettled_from - 1, 2**62)):
                totals[tuple(key)] = totals.get(tuple(key), 0) + int(count)
        return totals
