"""The seven health metrics: name, help, threshold and query, in one place.

``leasestore metrics`` and the exporter both read them through
:func:`compute_metrics`, so the CLI and Prometheus always agree. Every value is
counted from the audit tables over a window ending at the database clock's
"now"; ``deadLettersOpen`` is a current count.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import errors
from .db.driver import Driver, Step
from .db.engine import Op
from .db.queries import AuditTable
from .states import EventKind, LockOutcome
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
    events = {(kind, reason): count for kind, reason, count in (yield from d.windowed_event_counts(since))}
    locks = {(outcome,): count for outcome, count in (yield from d.windowed_lock_counts(since))}
    open_dead = yield from d.open_dead_letter_count()
    return seven_values(events, locks, open_dead)


def seven_values(events: Mapping[tuple[Any, ...], int], locks: Mapping[tuple[Any, ...], int],
                 open_dead: int) -> dict[str, float]:
    """The seven from the window's counts: ``events`` by (kind, reason) of the
    metric kinds, ``locks`` by (outcome,) of the metric outcomes."""

    def kind_total(kind: EventKind) -> int:
        return sum(n for (k, _r), n in events.items() if k == kind.value)

    def outcome(o: LockOutcome) -> int:
        return locks.get((o.value,), 0)

    recovered = outcome(LockOutcome.RECOVERED) + outcome(LockOutcome.RECOVER_DEAD_LETTERED)
    failed = outcome(LockOutcome.RECOVER_FAILED)
    attempted = recovered + failed
    return {
        "retryAttempts": kind_total(EventKind.RETRY_SCHEDULED),
        "retryLimitReached": kind_total(EventKind.DEAD_LETTERED),
        "lockExpired": kind_total(EventKind.TAKEN_OVER) + kind_total(EventKind.RECOVERED)
        + events.get((EventKind.DEAD_LETTERED.value, "lease_expired"), 0),
        "duplicateSuppressed": outcome(LockOutcome.DUPLICATE),
        "staleRecoveryFailureRate": failed / attempted if attempted else 0.0,
        "deadLettersOpen": open_dead,
        "lockConflictEvents": outcome(LockOutcome.BUSY) + outcome(LockOutcome.CONFLICT),
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


# --- the seven and the audit totals, read incrementally (the exporter) ---------
#
# A scrape must not cost the window's rows. Each audit table is read once, row
# by row in id order: a scrape reads the rows past the highest id it has read,
# and the ids it found missing below that (on PostgreSQL a transaction can
# commit a lower id after a higher one; a missing id is looked for again until
# SETTLE_SECONDS after it was first missed, then taken to be rolled back, and
# one missing before a row already SETTLE_SECONDS old is not looked for: a
# transaction is assumed to commit within SETTLE_SECONDS of its insert). The
# seven's rows are kept in buckets of ``floor(ts / width)``; a window is the
# sum of the buckets wholly inside it plus the rows of its partial first
# bucket, counted exactly through the (kind, ts) / (outcome, ts) index. The sum
# of the whole buckets is kept running as the window's start moves.
SETTLE_SECONDS = 30.0
BUCKETS_PER_WINDOW = 4096  # at most about this many buckets in a window
BUCKET_MARGIN = 256  # buckets kept behind the window's start, for a clock that steps back

Key = tuple[Any, ...]

# Per table: how many totals-grouping columns a row has, and the totals kept
# (column indexes into that grouping).
_TOTALS: dict[AuditTable, tuple[int, tuple[tuple[int, ...], ...]]] = {
    "event_log": (4, ((0,), (1, 2, 3))),  # (kind), (queue, from_status, to_status)
    "lock_events": (1, ((0,),)),  # (outcome)
}


def bucket_width(window_seconds: float) -> float:
    """Seconds per bucket: a power of two (exact bucket edges), at least 1, with
    at most about BUCKETS_PER_WINDOW buckets in the window."""
    width = 1.0
    while window_seconds / width > BUCKETS_PER_WINDOW:
        width *= 2.0
    return width


class AuditTail:
    """One append-only audit table, each row read once: totals since the first
    row, and the seven's counts over a window ending at each read's "now".

    A read costs the rows added since the previous read (the first read costs
    the table once). State changes are applied only after the statements they
    come from have all answered, so a read that fails part-way can be retried.
    """

    def __init__(self, table: AuditTable, window_minutes: float) -> None:
        self.table: AuditTable = table
        self._window_seconds = validate_window(window_minutes) * 60.0
        self.width = bucket_width(self._window_seconds)
        self._group_width, self._projections = _TOTALS[table]
        self._reset()

    def _reset(self) -> None:
        self.totals: tuple[dict[Key, int], ...] = tuple({} for _ in self._projections)
        self._top = 0  # highest id read
        self._gaps: list[tuple[int, int, float]] = []  # (first, last, give up at) of ids not seen yet
        self._buckets: dict[int, dict[Key, int]] = {}
        self._whole: dict[Key, int] = {}  # the sum of the buckets after ``_edge``
        self._edge: int | None = None  # the window's partial bucket; None: count the buckets afresh
        self._floor = 0  # buckets below are not kept

    def read(self, d: Driver, now: float) -> Step[dict[Key, int]]:
        """The seven's counts by key over ``ts >= now - window`` (as
        :func:`raw_counts` counts them), after reading the new rows."""
        table, width = self.table, self.width
        since = now - self._window_seconds
        edge = math.floor(since / width)
        fresh = self._edge is None or edge + 1 < self._floor
        if fresh:
            self._edge = None
            self._buckets.clear()
            self._whole.clear()
        else:
            self._move_edge(edge)
        keep_from = self._floor * width

        top = yield from d.audit_top_id(table)
        if top < self._top:  # not the table that was read before (a restored or new store)
            self._reset()
            fresh = True
        if fresh:
            keep_from = math.inf  # no buckets from the new rows: the window is counted afresh below
        n = self._group_width
        if top > self._top:
            rows = yield from d.audit_tail(table, self._top, top, keep_from, width)
            gaps: list[tuple[int, int]] = []
            if sum(int(row[-1]) for row in rows) != top - self._top:
                gaps = yield from d.audit_id_gaps(table, self._top, top, now - SETTLE_SECONDS)
            for row in rows:
                self._add_row(row[:n], row[n], row[n + 1:-1], int(row[-1]))
            self._gaps += [(first, last, now + SETTLE_SECONDS) for first, last in gaps]
            self._top = top

        if self._gaps:
            found = yield from d.audit_rows_in(table, [(first, last) for first, last, _ in self._gaps],
                                               keep_from, width)
            for row in found:
                self._add_row(row[1:1 + n], row[1 + n], row[2 + n:], 1)
            self._gaps = _without(self._gaps, sorted(int(row[0]) for row in found), now)

        if fresh:
            floor = edge - BUCKET_MARGIN
            rows = yield from d.audit_window_buckets(table, floor * width, math.inf, width)
            self._floor, self._edge = floor, edge
            for bucket, *key, count in rows:
                self._add_bucket(int(bucket), tuple(key), int(count))

        counts = dict(self._whole)
        for _bucket, *key, count in (yield from d.audit_window_buckets(table, since, (edge + 1) * width, width)):
            counts[tuple(key)] = counts.get(tuple(key), 0) + int(count)
        return counts

    def _add_row(self, group: Sequence[Any], bucket: Any, key: Sequence[Any], count: int) -> None:
        for projection, totals in zip(self._projections, self.totals):
            total_key = tuple(group[i] for i in projection)
            totals[total_key] = totals.get(total_key, 0) + count
        if bucket is not None:
            self._add_bucket(int(bucket), tuple(key), count)

    def _add_bucket(self, bucket: int, key: Key, count: int) -> None:
        if bucket < self._floor:
            return
        per_key = self._buckets.setdefault(bucket, {})
        per_key[key] = per_key.get(key, 0) + count
        if self._edge is not None and bucket > self._edge:
            self._whole[key] = self._whole.get(key, 0) + count

    def _move_edge(self, edge: int) -> None:
        """Move the window's partial bucket to ``edge``: the buckets it passes
        leave the running sum (or join it, when the clock stepped back)."""
        old = self._edge
        assert old is not None
        if edge != old:
            low, high, sign = (old, edge, -1) if edge > old else (edge, old, 1)
            passed = (range(low + 1, high + 1) if high - low <= len(self._buckets)
                      else sorted(b for b in self._buckets if low < b <= high))
            for bucket in passed:
                for key, count in self._buckets.get(bucket, {}).items():
                    left = self._whole.get(key, 0) + sign * count
                    if left:
                        self._whole[key] = left
                    else:
                        self._whole.pop(key, None)
            self._edge = edge
        floor = edge - BUCKET_MARGIN
        if floor > self._floor:
            for bucket in [b for b in self._buckets if b < floor]:
                del self._buckets[bucket]
            self._floor = floor


def _without(gaps: list[tuple[int, int, float]], found: list[int], now: float) -> list[tuple[int, int, float]]:
    """``gaps`` less the ids ``found`` (sorted), and less the runs given up by ``now``."""
    left: list[tuple[int, int, float]] = []
    for first, last, give_up in gaps:
        if give_up < now:
            continue
        start = first
        for found_id in found[bisect.bisect_left(found, first):bisect.bisect_right(found, last)]:
            if found_id > start:
                left.append((start, found_id - 1, give_up))
            start = found_id + 1
        if start <= last:
            left.append((start, last, give_up))
    return left


class ScrapeCounts:
    """The seven over a window ending at each read's "now", equal to
    :func:`metrics_op`'s for the same snapshot, and the audit totals, each
    read costing the audit rows added since the previous one."""

    def __init__(self, window_minutes: float = DEFAULT_WINDOW_MINUTES) -> None:
        self.window_minutes = validate_window(window_minutes)
        self.events = AuditTail("event_log", self.window_minutes)
        self.locks = AuditTail("lock_events", self.window_minutes)

    def read(self, d: Driver, now: float) -> Step[dict[str, float]]:
        """The seven as :func:`raw_counts` gives them for ``now - window``
        (run it inside one read snapshot)."""
        events = yield from self.events.read(d, now)
        locks = yield from self.locks.read(d, now)
        open_dead = yield from d.open_dead_letter_count()
        return seven_values(events, locks, open_dead)

    @property
    def event_kinds(self) -> dict[str, int]:
        """Audit-log rows by kind, every row so far."""
        return {key[0]: n for key, n in self.events.totals[0].items()}

    @property
    def transitions(self) -> dict[Key, int]:
        """Audit-log rows by (queue, from_status, to_status), every row so far."""
        return dict(self.events.totals[1])

    @property
    def lock_outcomes(self) -> dict[str, int]:
        """Lock rows by outcome, every row so far."""
        return {key[0]: n for key, n in self.locks.totals[0].items()}
