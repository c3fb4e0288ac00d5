"""Check a run's audit log against the store's invariants.

:func:`check_events` replays ``event_log`` rows per task, in id order (a
task's own events are serialised by its row lock, so id order is their real
order even where timestamps of different tasks interleave), as a state machine
over ``from_status``/``to_status``. It reports every departure from the
contract in DESIGN.md as a :class:`Violation`:

``single_holder``
    a claim while a lease was held, a takeover before the previous lease's
    expiry (``ts`` against ``detail.previous_expires_at``) or of a lease other
    than the current one, or a lease-ending write accepted from a fencing
    token that no longer held the lease;
``fencing_monotonic``
    a claim or takeover whose fencing token is not above every earlier one;
``terminal_once``
    any event after a task was done, or a second dead letter without a requeue;
``event_per_change``
    a row whose statuses do not fit its kind or the task's replayed state (a
    change without its event), a task that does not start with ``enqueued``,
    or a final status that disagrees with the log;
``not_drained``
    a task neither done nor dead at the end (only with ``require_drained``);
``lock_delay``
    a claim or takeover by another owner before the lock-delay window of a
    lease that ended unreleased was over (``detail.held_until`` of the
    recovered, revoked or taken-over row);
``result_once``
    a task holding a result that no done release stored, or a done release
    that stored one the task no longer holds;
``priority_order``
    a queue claim (not one naming its task) of a task while a task of higher
    priority in the same queue was claimable by anyone from ``order_tolerance``
    seconds before the claim to as long after it. The tolerance keeps the rule
    sound under ``SKIP LOCKED``: a claimer may pass over a row another claim
    has locked, but that claim then commits within a transaction's length.

:func:`check_metrics` checks the fifth invariant (``metrics_match_log``): the
seven metrics as the SQL computes them equal a recount of the raw rows.

The lease expiry is not in ``event_log`` (heartbeats extend it in
``lock_events`` only), so an early takeover is detected from the takeover
row's own record of the expiry it replaced; recoveries are checked by state.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .db.driver import Step
from .metrics import raw_counts, validate_window
from .states import EventKind, LockOutcome, TaskStatus

if TYPE_CHECKING:
    from .store import LeaseStore

SINGLE_HOLDER = "single_holder"
FENCING_MONOTONIC = "fencing_monotonic"
TERMINAL_ONCE = "terminal_once"
EVENT_PER_CHANGE = "event_per_change"
NOT_DRAINED = "not_drained"
METRICS_MATCH_LOG = "metrics_match_log"  # invariant 5, checked by check_metrics
LOCK_DELAY = "lock_delay"
RESULT_ONCE = "result_once"
PRIORITY_ORDER = "priority_order"
# Each event carries its writer's clock, so a writer whose clock was stepped
# back would pass every other check: in id order, time must not go backwards
# by more than the tolerance.
CLOCK_STEP = "clock_step"
INVARIANTS = (SINGLE_HOLDER, FENCING_MONOTONIC, TERMINAL_ONCE, EVENT_PER_CHANGE, NOT_DRAINED, METRICS_MATCH_LOG,
              CLOCK_STEP, LOCK_DELAY, RESULT_ONCE, PRIORITY_ORDER)
# Commits on PostgreSQL may land out of id order by a transaction's length; a
# clock stepped back by more than this is reported.
DEFAULT_CLOCK_STEP_TOLERANCE = 5.0
DEFAULT_ORDER_TOLERANCE = 1.0

TERMINAL = (TaskStatus.DONE.value, TaskStatus.DEAD.value)
PAGE_SIZE = 5000

_P, _L, _D, _X = (TaskStatus.PENDING.value, TaskStatus.LEASED.value,
                  TaskStatus.DONE.value, TaskStatus.DEAD.value)

# The only (from_status, to_status) each kind of row may carry.
TRANSITIONS: dict[str, tuple[str | None, str]] = {
    EventKind.ENQUEUED.value: (None, _P),
    EventKind.CLAIMED.value: (_P, _L),
    EventKind.TAKEN_OVER.value: (_L, _L),
    EventKind.CHECKPOINTED.value: (_L, _L),
    EventKind.RELEASED.value: (_L, _D),
    EventKind.RETRY_SCHEDULED.value: (_L, _P),
    EventKind.DEAD_LETTERED.value: (_L, _X),
    EventKind.RECOVERED.value: (_L, _P),
    EventKind.REVOKED.value: (_L, _P),
    EventKind.REQUEUED.value: (_X, _P),
    EventKind.RESOLVED.value: (_X, _X),
}
NEW_LEASE = frozenset({EventKind.CLAIMED.value, EventKind.TAKEN_OVER.value})
# Rows written on behalf of the current lease: they must carry its fencing token.
UNDER_LEASE = frozenset({
    EventKind.CHECKPOINTED.value, EventKind.RELEASED.value, EventKind.RETRY_SCHEDULED.value,
    EventKind.DEAD_LETTERED.value, EventKind.RECOVERED.value, EventKind.REVOKED.value,
})


@dataclass(frozen=True)
class Violation:
    invariant: str
    task_id: str | None
    event_id: int | None
    message: str

    def __str__(self) -> str:
        where = f"task {self.task_id!r}" if self.task_id is not None else "log"
        at = f" event {self.event_id}" if self.event_id is not None else ""
        return f"[{self.invariant}] {where}{at}: {self.message}"


@dataclass
class HistoryReport:
    tasks: int
    events: int
    terminal: dict[str, int]
    unfinished: list[str]
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_invariant(self) -> dict[str, int]:
        return dict(Counter(v.invariant for v in self.violations))

    def summary(self) -> str:
        head = (f"history {'ok' if self.ok else 'VIOLATED'}: {self.tasks} tasks, {self.events} events, "
                f"done {self.terminal.get(_D, 0)}, dead {self.terminal.get(_X, 0)}, "
                f"unfinished {len(self.unfinished)}, violations {len(self.violations)}")
        if self.ok:
            return head
        counts = ", ".join(f"{k}={n}" for k, n in sorted(self.by_invariant().items()))
        shown = "\n".join(f"  {v}" for v in self.violations[:5])
        more = f"\n  … and {len(self.violations) - 5} more" if len(self.violations) > 5 else ""
        return f"{head} ({counts})\n{shown}{more}"


@dataclass
class _Lease:
    owner: str | None
    fence: int


@dataclass
class _Hold:
    """A lock-delay window: only ``owner`` may lease the task before ``until``."""

    owner: str | None
    until: float


@dataclass
class _TaskReplay:
    """What the log says about one task so far."""

    task_id: str
    status: str | None = None
    lease: _Lease | None = None
    max_fence: int = 0
    hold: _Hold | None = None
    queue: str | None = None
    priority: int = 0
    result_stored: bool = False
    # (from, to) spans in which anyone could claim the task (for priority_order).
    open_spans: list[tuple[float, float]] = field(default_factory=list)
    open_from: float | None = None
    queue_claims: list[tuple[int | None, float]] = field(default_factory=list)  # (event id, ts)


def _detail(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if isinstance(raw, str) and raw:
        try:
            value = json.loads(raw)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class _Checker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def flag(self, invariant: str, task_id: str | None, event_id: int | None, message: str) -> None:
        self.violations.append(Violation(invariant, task_id, event_id, message))

    def replay(self, t: _TaskReplay, e: Mapping[str, Any]) -> None:
        eid = _int_or_none(e.get("id"))
        kind = str(e.get("kind"))
        row_from, row_to = e.get("from_status"), e.get("to_status")
        fence = _int_or_none(e.get("fencing_token"))
        tid = t.task_id
        expected = TRANSITIONS.get(kind)
        if expected is None:
            self.flag(EVENT_PER_CHANGE, tid, eid, f"unknown event kind {kind!r}")
            return
        exp_from, exp_to = expected
        if (row_from, row_to) != expected:
            self.flag(EVENT_PER_CHANGE, tid, eid,
                      f"{kind} must go {exp_from}->{exp_to}, the row says {row_from}->{row_to}")
        state = t.status

        if kind == EventKind.ENQUEUED:
            if state is not None:
                self.flag(EVENT_PER_CHANGE, tid, eid, f"enqueued again while {state}")
        elif state is None:
            self.flag(EVENT_PER_CHANGE, tid, eid, f"first event is {kind}, not enqueued")
        elif state == _D:
            self.flag(TERMINAL_ONCE, tid, eid, f"{kind} after the task was done")
        elif state == _X and exp_from != _X:
            what = "dead-lettered a second time" if kind == EventKind.DEAD_LETTERED else f"{kind} while dead-lettered"
            self.flag(TERMINAL_ONCE, tid, eid, f"{what} (no requeue in between)")
        elif kind == EventKind.CLAIMED and state == _L:
            held = t.lease
            self.flag(SINGLE_HOLDER, tid, eid,
                      f"claimed by {e.get('owner')!r} (fence {fence}) while the lease of "
                      f"{held.owner if held else None!r} (fence {held.fence if held else None}) was held")
        elif state != exp_from:
            self.flag(EVENT_PER_CHANGE, tid, eid,
                      f"{kind} from {exp_from}, but the log left the task {state}: "
                      "a state change without its event")
        elif kind == EventKind.TAKEN_OVER:
            self._check_takeover(t, e, eid, fence)
        elif kind in UNDER_LEASE and t.lease is not None and fence != t.lease.fence:
            self.flag(SINGLE_HOLDER, tid, eid,
                      f"{kind} accepted from fencing token {fence} while fence {t.lease.fence} "
                      f"({t.lease.owner!r}) held the lease")

        self._track(t, e, kind, eid)
        if kind in NEW_LEASE:
            if fence is None or fence <= t.max_fence:
                self.flag(FENCING_MONOTONIC, tid, eid,
                          f"{kind} with fencing token {fence}, not above the earlier {t.max_fence}")
            t.lease = _Lease(e.get("owner"), fence if fence is not None else t.max_fence)
        elif exp_to != _L:
            t.lease = None
        if fence is not None:
            t.max_fence = max(t.max_fence, fence)
        t.status = exp_to

    def _track(self, t: _TaskReplay, e: Mapping[str, Any], kind: str, eid: int | None) -> None:
        """Lock-delay windows, stored results and the spans a task was open to
        any claimer, as the row changes them (before the lease bookkeeping)."""
        detail = _detail(e.get("detail"))
        ts = _float_or_none(e.get("ts"))
        owner = e.get("owner")
        if kind == EventKind.ENQUEUED:
            t.queue = e.get("queue")
            t.priority = int(detail.get("priority", 0))
        if kind in NEW_LEASE:
            hold = t.hold
            if kind == EventKind.TAKEN_OVER:
                until = _float_or_none(detail.get("held_until"))
                hold = _Hold(detail.get("previous_owner"), until) if until is not None else None
            if hold is not None and owner != hold.owner and ts is not None and ts < hold.until:
                self.flag(LOCK_DELAY, t.task_id, eid,
                          f"{kind} by {owner!r} {hold.until - ts:.3f} s before the lock-delay of "
                          f"{hold.owner!r}'s lease ended")
            t.hold = None
        elif kind in (EventKind.RECOVERED, EventKind.REVOKED):
            until = _float_or_none(detail.get("held_until"))
            t.hold = _Hold(t.lease.owner if t.lease else owner, until) if until is not None else None
        elif kind == EventKind.REQUEUED:
            t.hold = None
        if kind == EventKind.RELEASED and detail.get("result"):
            t.result_stored = True
        if kind == EventKind.CLAIMED and ts is not None and not detail.get("named"):
            t.queue_claims.append((eid, ts))
        if ts is None:
            return
        if t.open_from is not None:  # whatever happens next ends the span the task was pending in
            if ts > t.open_from:
                t.open_spans.append((t.open_from, ts))
            t.open_from = None
        if TRANSITIONS[kind][1] == _P:
            start = ts
            if kind == EventKind.ENQUEUED:
                start = _float_or_none(detail.get("available_at")) or ts
            elif kind == EventKind.RETRY_SCHEDULED:
                start = _float_or_none(detail.get("retry_at")) or ts
            if t.hold is not None:
                start = max(start, t.hold.until)
            t.open_from = start

    def _check_takeover(self, t: _TaskReplay, e: Mapping[str, Any], eid: int | None,
                        fence: int | None) -> None:
        detail = _detail(e.get("detail"))
        prev_fence = detail.get("previous_fencing_token")
        if t.lease is not None and prev_fence is not None and int(prev_fence) != t.lease.fence:
            self.flag(SINGLE_HOLDER, t.task_id, eid,
                      f"taken over from fence {prev_fence}, but fence {t.lease.fence} held the lease")
        prev_expires, ts = detail.get("previous_expires_at"), e.get("ts")
        if prev_expires is not None and ts is not None and float(ts) < float(prev_expires):
            self.flag(SINGLE_HOLDER, t.task_id, eid,
                      f"taken over by {e.get('owner')!r} (fence {fence}) "
                      f"{float(prev_expires) - float(ts):.3f} s before the previous lease expired")


def check_events(
    events: Iterable[Mapping[str, Any]],
    final_status: Mapping[str, str] | None = None,
    *,
    require_drained: bool = True,
    clock_step_tolerance: float | None = DEFAULT_CLOCK_STEP_TOLERANCE,
    with_result: Collection[str] | None = None,
    order_tolerance: float = DEFAULT_ORDER_TOLERANCE,
) -> HistoryReport:
    """Replay ``event_log`` rows (dicts with its columns) and report every violation.

    ``final_status`` (task id → status from the ``tasks`` table), when given,
    must agree with where each task's log ends, and names tasks that have no
    event at all. With ``require_drained``, every task must end done or dead.
    An event whose time is more than ``clock_step_tolerance`` seconds before an
    earlier event's (in id order) is a ``clock_step``; None skips that check.
    ``with_result`` (ids of tasks whose row holds a result), when given, is
    checked against the done releases that stored one.
    """
    checker = _Checker()
    rows = list(events)
    if clock_step_tolerance is not None:
        _check_clock(checker, rows, clock_step_tolerance)
    seen_ids: set[int] = set()
    per_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for e in rows:
        eid = _int_or_none(e.get("id"))
        if eid is not None:
            if eid in seen_ids:
                checker.flag(EVENT_PER_CHANGE, e.get("task_id"), eid, "event id appears twice")
                continue
            seen_ids.add(eid)
        per_task[str(e.get("task_id"))].append(e)

    replays: dict[str, _TaskReplay] = {}
    for task_id, task_events in per_task.items():
        t = replays[task_id] = _TaskReplay(task_id)
        for e in sorted(task_events, key=lambda r: _int_or_none(r.get("id")) or 0):
            checker.replay(t, e)

    if with_result is not None:
        _check_results(checker, replays, set(with_result))
    _check_priority_order(checker, replays, order_tolerance)

    final: dict[str, str | None] = {tid: t.status for tid, t in replays.items()}
    if final_status is not None:
        for task_id, status in final_status.items():
            logged = final.get(task_id)
            if task_id not in final:
                checker.flag(EVENT_PER_CHANGE, task_id, None, f"task is {status} but has no event")
            elif logged != status:
                checker.flag(EVENT_PER_CHANGE, task_id, None,
                             f"task row says {status}, its event log ends at {logged}")
            final[task_id] = status
        for task_id in replays.keys() - final_status.keys():
            checker.flag(EVENT_PER_CHANGE, task_id, None, "events name a task that is not in tasks")

    terminal = {_D: 0, _X: 0}
    unfinished = []
    for task_id, ended in sorted(final.items()):
        if ended is not None and ended in terminal:
            terminal[ended] += 1
        else:
            unfinished.append(task_id)
            if require_drained:
                checker.flag(NOT_DRAINED, task_id, None, f"ended {ended}, not done or dead")
    return HistoryReport(tasks=len(final), events=len(rows), terminal=terminal,
                         unfinished=unfinished, violations=checker.violations)


def _check_results(checker: _Checker, replays: Mapping[str, _TaskReplay], with_result: set[str]) -> None:
    for task_id in sorted(with_result - {tid for tid, t in replays.items() if t.result_stored}):
        checker.flag(RESULT_ONCE, task_id, None, "the task holds a result no done release stored")
    for task_id in sorted(tid for tid, t in replays.items() if t.result_stored and tid not in with_result):
        checker.flag(RESULT_ONCE, task_id, None, "a done release stored a result the task no longer holds")


class _OpenSpans:
    """The spans of one priority in one queue, sorted by start, with a running
    maximum of their ends: "was some task open across [a, b]?" in log time."""

    def __init__(self, spans: list[tuple[float, float, str]]) -> None:
        spans.sort()
        self.starts = [start for start, _, _ in spans]
        self.longest: list[tuple[float, str]] = []
        best = (-math.inf, "")
        for _, end, task_id in spans:
            best = max(best, (end, task_id))
            self.longest.append(best)

    def open_across(self, since: float, until: float) -> str | None:
        i = bisect.bisect_right(self.starts, since)
        if i == 0:
            return None
        end, task_id = self.longest[i - 1]
        return task_id if end > until else None


def _check_priority_order(checker: _Checker, replays: Mapping[str, _TaskReplay], tolerance: float) -> None:
    by_queue: dict[str | None, dict[int, list[tuple[float, float, str]]]] = defaultdict(lambda: defaultdict(list))
    for t in replays.values():
        spans = t.open_spans + ([(t.open_from, math.inf)] if t.open_from is not None else [])
        for start, end in spans:
            by_queue[t.queue][t.priority].append((start, end, t.task_id))
    index = {queue: {p: _OpenSpans(spans) for p, spans in levels.items()}
             for queue, levels in by_queue.items() if len(levels) > 1}
    for t in replays.values():
        levels = index.get(t.queue)
        if levels is None:
            continue
        higher = [(p, level) for p, level in levels.items() if p > t.priority]
        for eid, ts in t.queue_claims:
            for p, level in higher:
                passed = level.open_across(ts - tolerance, ts + tolerance)
                if passed is not None:
                    checker.flag(PRIORITY_ORDER, t.task_id, eid,
                                 f"claimed at priority {t.priority} while {passed!r} (priority {p}) "
                                 f"was claimable")
                    break


def read_snapshot(store: LeaseStore, *, queue: str | None = None,
                  page_size: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], dict[str, str], set[str]]:
    """The ``event_log`` in id order, every task's status (of one queue, if
    given) and the ids of tasks that hold a result, read in pages inside one
    read transaction, so all come from the same snapshot even while workers go
    on writing."""
    d = store.database.driver

    def body(now: float) -> Step[tuple[list[dict[str, Any]], dict[str, str], set[str]]]:
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = yield from d.events_page(queue, after, page_size)
            events.extend(e.as_dict() for e in page)
            if len(page) < page_size:
                break
            after = page[-1].id
        final: dict[str, str] = {}
        with_result: set[str] = set()
        last = ""
        while True:
            statuses = yield from d.task_status_page(queue, last, page_size)
            for task_id, status, has_result in statuses:
                final[task_id] = status
                if has_result:
                    with_result.add(task_id)
            if len(statuses) < page_size:
                break
            last = statuses[-1][0]
        return events, final, with_result

    return store.database.read(body)


def _check_clock(checker: _Checker, rows: list[Mapping[str, Any]], tolerance: float) -> None:
    latest: float | None = None
    for e in sorted(rows, key=lambda r: _int_or_none(r.get("id")) or 0):
        try:
            ts = float(e["ts"])
        except (KeyError, TypeError, ValueError):
            continue
        if latest is not None and ts < latest - tolerance:
            checker.flag(CLOCK_STEP, e.get("task_id"), _int_or_none(e.get("id")),
                         f"written at {ts:.3f}, {latest - ts:.3f} s before an earlier event: "
                         f"a writer's clock was behind")
        latest = ts if latest is None else max(latest, ts)


def check_history(store: LeaseStore, *, require_drained: bool = True, queue: str | None = None,
                  clock_step_tolerance: float | None = DEFAULT_CLOCK_STEP_TOLERANCE) -> HistoryReport:
    """Check everything the store has recorded, or one queue's tasks (see :func:`check_events`).

    Safe while workers are still running (then pass ``require_drained=False``):
    the log and the statuses are read from one snapshot.
    """
    events, final, with_result = read_snapshot(store, queue=queue)
    return check_events(events, final, require_drained=require_drained,
                        clock_step_tolerance=clock_step_tolerance, with_result=with_result)


# --- invariant 5: the metrics say what the log says ----------------------------

_K = EventKind
_LOCK_RECOVERIES = (LockOutcome.RECOVERED.value, LockOutcome.RECOVER_DEAD_LETTERED.value)


def recount_metrics(events: Iterable[Mapping[str, Any]], lock_events: Iterable[Mapping[str, Any]],
                    since: float) -> dict[str, float]:
    """The seven metrics recounted in Python from raw ``event_log`` and
    ``lock_events`` rows, one row at a time, as DESIGN.md defines them: an
    independent reference for the SQL in :mod:`leasestore.metrics`.

    ``events`` must be the whole log (open dead letters are counted from every
    dead-lettering, requeue and resolve ever written); the windowed values take
    rows with ``ts >= since``.
    """
    windowed: Counter[str] = Counter()
    open_dead_letters = 0
    for e in events:
        kind = e["kind"]
        if kind == _K.DEAD_LETTERED.value:
            open_dead_letters += 1
        elif kind in (_K.REQUEUED.value, _K.RESOLVED.value):
            open_dead_letters -= 1
        if float(e["ts"]) < since:
            continue
        if kind == _K.RETRY_SCHEDULED.value:
            windowed["retryAttempts"] += 1
        elif kind == _K.DEAD_LETTERED.value:
            windowed["retryLimitReached"] += 1
            if e.get("reason") == "lease_expired":
                windowed["lockExpired"] += 1
        elif kind in (_K.TAKEN_OVER.value, _K.RECOVERED.value):
            windowed["lockExpired"] += 1
    outcomes = Counter(str(r["outcome"]) for r in lock_events if float(r["ts"]) >= since)
    attempted = sum(outcomes[o] for o in _LOCK_RECOVERIES) + outcomes[LockOutcome.RECOVER_FAILED.value]
    return {
        "retryAttempts": windowed["retryAttempts"],
        "retryLimitReached": windowed["retryLimitReached"],
        "lockExpired": windowed["lockExpired"],
        "duplicateSuppressed": outcomes[LockOutcome.DUPLICATE.value],
        "staleRecoveryFailureRate": outcomes[LockOutcome.RECOVER_FAILED.value] / attempted if attempted else 0.0,
        "deadLettersOpen": open_dead_letters,
        "lockConflictEvents": outcomes[LockOutcome.BUSY.value] + outcomes[LockOutcome.CONFLICT.value],
    }


def compare_metrics(reported: Mapping[str, float], recounted: Mapping[str, float]) -> list[Violation]:
    return [Violation(METRICS_MATCH_LOG, None, None,
                      f"{key} is {reported[key]:g} but the log says {recounted[key]:g}")
            for key in recounted if not math.isclose(float(reported[key]), float(recounted[key]), abs_tol=1e-9)]


def check_metrics(store: LeaseStore, window_minutes: float) -> list[Violation]:
    """Invariant 5: the metrics computed by :mod:`leasestore.metrics` over the
    last ``window_minutes`` equal :func:`recount_metrics` over the same rows,
    both read in one snapshot (so it holds while workers keep writing)."""
    window = validate_window(window_minutes)
    d = store.database.driver

    def body(now: float) -> Step[tuple[dict[str, float], dict[str, float]]]:
        since = now - window * 60.0
        reported = yield from raw_counts(d, since)
        events = [{"ts": ts, "kind": kind, "reason": reason}
                  for ts, kind, reason in (yield from d.event_kinds_in_order())]
        locks = [{"ts": ts, "outcome": outcome} for ts, outcome in (yield from d.lock_outcomes_since(since))]
        return reported, recount_metrics(events, locks, since)

    reported, recounted = store.database.read(body)
    return compare_metrics(reported, recounted)
