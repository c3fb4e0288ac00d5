"""The driver seam: one method per store operation, written as steps.

A *step* is a generator that yields :class:`Stmt` objects and is sent each
statement's result back (psycopg shares its protocol between its sync and
async connections the same way). Nothing in a step touches a connection, so
one step serves both faces: :class:`leasestore.db.engine.Database` drives it on
a blocking connection, :class:`leasestore.db.aengine.AsyncDatabase` on an
asyncio one. A step owns its transaction: it yields ``BEGIN`` and ``COMMIT``
itself, or runs as one autocommitted statement where the backend can.

:class:`Driver` holds the statements both backends share; each backend
subclass overrides the operations it does its own way (PostgreSQL's
one-statement claim, heartbeat and release; SQLite's short ``BEGIN
IMMEDIATE`` transactions). Callers never ask which backend they have.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, NamedTuple, NoReturn, TypeVar

from .. import errors
from . import queries as q
from .rows import (
    CandidateRow,
    DeadLetterRow,
    EventRow,
    ExpiredRow,
    ExtendRow,
    HeldBackRow,
    LeaseRow,
    LeaseStateRow,
    PendingRow,
    QueueSettingsRow,
    ReleaseRow,
    TaskRow,
)

T = TypeVar("T")


class Fetch(enum.Enum):
    NONE = 0  # the result is None
    ONE = 1  # one row or None
    ALL = 2  # a list of rows
    ROWCOUNT = 3  # rows changed


class Tx(enum.Enum):
    """What a statement does to the connection's transaction (the runner rolls
    back an open one when a step fails, and SQLite gates its writers)."""

    NONE = 0
    BEGIN_WRITE = 1
    BEGIN_READ = 2
    END = 3


_NO_PARAMS: Mapping[str, Any] = {}


class Stmt(NamedTuple):
    """One statement of a step (a tuple: a dozen are made per claim and release)."""

    sql: str  # in the driver's own parameter style
    params: Mapping[str, Any] = _NO_PARAMS
    fetch: Fetch = Fetch.NONE
    tx: Tx = Tx.NONE


COMMIT = Stmt("COMMIT", tx=Tx.END)
ROLLBACK = Stmt("ROLLBACK", tx=Tx.END)

Step = Generator[Stmt, Any, T]
"""A unit of database work: yields statements, receives their results."""


def dumps(detail: Mapping[str, Any] | None) -> str | None:
    """Audit detail JSON, compact; the one encoder every audit row uses."""
    return json.dumps(detail, separators=(",", ":")) if detail else None


class Event(NamedTuple):
    """One ``event_log`` row (a state change)."""

    task_id: str
    queue: str
    kind: str
    from_status: str | None
    to_status: str | None
    owner: str | None = None
    fence: int | None = None
    attempt: int | None = None
    reason: str | None = None
    detail: Mapping[str, Any] | None = None

    def params(self, now: float) -> dict[str, Any]:
        return {"now": now, "id": self.task_id, "queue": self.queue, "kind": self.kind,
                "from_status": self.from_status, "to_status": self.to_status, "owner": self.owner,
                "fence": self.fence, "attempt": self.attempt, "reason": self.reason,
                "detail": None if self.detail is None else dumps(self.detail)}


class LockEvent(NamedTuple):
    """One ``lock_events`` row (a lock outcome, conflicts included)."""

    task_id: str | None
    queue: str | None
    owner: str | None
    op: str
    outcome: str
    fence: int | None
    detail: Mapping[str, Any] | str | None = None  # a str is JSON already

    def params(self, now: float) -> dict[str, Any]:
        return {"now": now, "id": self.task_id, "queue": self.queue, "owner": self.owner,
                "op": self.op, "outcome": self.outcome, "fence": self.fence,
                "detail": self.detail if self.detail is None or isinstance(self.detail, str)
                else dumps(self.detail)}


class ClaimParams(NamedTuple):
    queue: str
    owner: str
    token_hash: str
    ttl: float
    resume: bool  # an owner's own unexpired lease in the queue comes back first


class ClaimNextKind(enum.Enum):
    ACQUIRED = "acquired"  # a pending task was leased (events written)
    MINE = "mine"  # the owner already holds a lease in the queue: nothing written
    EXPIRED = "expired"  # none ready, but an expired lease may be taken over: nothing written
    HELD = "held"  # none ready for this owner, one held back by its lock-delay: the lock_delayed row written
    NONE = "none"  # nothing to claim: nothing written


class ClaimNextRow(NamedTuple):
    kind: ClaimNextKind
    lease: LeaseRow | None = None
    task_id: str | None = None


class ExtendParams(NamedTuple):
    task_id: str
    token_hash: str
    fence: int
    ttl: float
    checkpoint: str | None  # JSON to store, when ``checkpointing``
    checkpointing: bool


class ReleaseParams(NamedTuple):
    """A holder's release, already decided: where the task goes and what the log says."""

    task_id: str
    token_hash: str
    fence: int
    attempt: int
    to_status: str
    delay: float  # seconds until the task is available again
    error: str | None
    event_kind: str
    event_reason: str | None
    lock_outcome_detail: str  # ``{"outcome": …}`` of the lock row
    dead_letter_reason: str | None  # set when the release dead-letters the task
    result: str | None = None  # JSON kept with a done task


class Clock:
    """How the store reads the database clock: ``offset`` seconds are added
    (tests move time with it), or, when ``frozen`` is set, that instant is the
    time (tests pin a boundary exactly, on both backends)."""

    def __init__(self, offset: float = 0.0, tolerance: float | None = None) -> None:
        self.offset = float(offset)
        self.frozen: float | None = None
        # How far behind the store's time a writer's clock may be (SQLite,
        # where every process reads its own clock); None disables the check.
        self.tolerance = tolerance

    def params(self) -> dict[str, float | None]:
        """The parameters of a PostgreSQL clock expression."""
        return {"offset": self.offset, "frozen": self.frozen}


class Driver:
    """Statements both backends share; subclasses override what they do their own way."""

    name: ClassVar[str]
    named_params: ClassVar[bool]  # ``:name`` as is, else rewritten to ``%(name)s``
    begin_write_sql: ClassVar[str]
    begin_read_sql: ClassVar[str]

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._texts: dict[str, str] = {}
        # The statements every transaction sends, made once.
        self._begin_write = Stmt(self.begin_write_sql, tx=Tx.BEGIN_WRITE)
        self._begin_read = Stmt(self.begin_read_sql, tx=Tx.BEGIN_READ)

    # --- statements -------------------------------------------------------
    def text(self, statement: str) -> str:
        """``statement`` in this driver's parameter style (rewritten once)."""
        cached = self._texts.get(statement)
        if cached is None:
            cached = statement if self.named_params else q.to_pyformat(statement)
            self._texts[statement] = cached
        return cached

    def stmt(self, statement: str, params: Mapping[str, Any] | None = None,
             fetch: Fetch = Fetch.NONE, tx: Tx = Tx.NONE) -> Stmt:
        return Stmt(self.text(statement), params or _NO_PARAMS, fetch, tx)

    def one(self, statement: str, params: Mapping[str, Any] | None = None) -> Step[Sequence[Any] | None]:
        row: Sequence[Any] | None = yield self.stmt(statement, params, Fetch.ONE)
        return row

    def all(self, statement: str, params: Mapping[str, Any] | None = None) -> Step[list[Sequence[Any]]]:
        rows: list[Sequence[Any]] = yield self.stmt(statement, params, Fetch.ALL)
        return list(rows)

    def count(self, statement: str, params: Mapping[str, Any] | None = None) -> Step[int]:
        changed: int = yield self.stmt(statement, params, Fetch.ROWCOUNT)
        return changed

    def run(self, statement: str, params: Mapping[str, Any] | None = None) -> Step[None]:
        yield self.stmt(statement, params)

    # --- transactions and the clock -----------------------------------------
    def write_gate(self) -> AbstractContextManager[None]:
        """Held from ``BEGIN`` of a write transaction to its end (SQLite's fair gate)."""
        return nullcontext()

    def begin_write(self) -> Step[None]:
        """A write transaction holding whatever lock the backend needs up front."""
        yield self._begin_write

    def begin_read(self) -> Step[None]:
        """One consistent read snapshot."""
        yield self._begin_read

    def commit(self) -> Step[None]:
        yield COMMIT

    def rollback(self) -> Step[None]:
        yield ROLLBACK

    def now(self) -> Step[float]:
        """The database clock, epoch seconds, plus the store's offset."""
        raise NotImplementedError

    def write_now(self) -> Step[float]:
        """The clock for a write transaction that has begun: :meth:`now`, where
        the backend has one clock for every writer."""
        return (yield from self.now())

    def write(self, body: Callable[[float], Step[T]]) -> Step[T]:
        """``body(now)`` in one write transaction."""
        yield from self.begin_write()
        now = yield from self.write_now()
        result = yield from body(now)
        yield from self.commit()
        return result

    def refused(self, body: Callable[[float], Step[errors.LeaseLost]]) -> Step[NoReturn]:
        """Record a refusal with ``body(now)`` in one write transaction, then raise
        the error it returns: the conflict row is committed first."""
        error = yield from self.write(body)
        raise error

    def read(self, body: Callable[[float], Step[T]]) -> Step[T]:
        """``body(now)`` in one read snapshot."""
        yield from self.begin_read()
        now = yield from self.now()
        result = yield from body(now)
        yield from self.rollback()
        return result

    def savepoint(self) -> Step[None]:
        yield Stmt("SAVEPOINT leasestore_row")

    def release_savepoint(self) -> Step[None]:
        yield Stmt("RELEASE SAVEPOINT leasestore_row")

    def rollback_to_savepoint(self) -> Step[None]:
        yield Stmt("ROLLBACK TO SAVEPOINT leasestore_row")
        yield Stmt("RELEASE SAVEPOINT leasestore_row")

    # --- audit rows -----------------------------------------------------------
    def insert_event(self, now: float, event: Event) -> Step[None]:
        yield self.stmt(q.INSERT_EVENT, event.params(now))

    def insert_lock_event(self, now: float, event: LockEvent) -> Step[None]:
        yield self.stmt(q.INSERT_LOCK_EVENT, event.params(now))

    # --- enqueue --------------------------------------------------------------
    def insert_task(self, now: float, task_id: str, queue: str, payload: str | None, max_attempts: int,
                    delay: float, dedupe_key: str | None, priority: int, lock_delay: float) -> Step[None]:
        yield self.stmt(q.INSERT_TASK, {"id": task_id, "queue": queue, "payload": payload,
                                        "max_attempts": max_attempts, "now": now, "delay": delay,
                                        "dedupe_key": dedupe_key, "priority": priority, "lock_delay": lock_delay})

    def task_by_dedupe_key(self, queue: str, dedupe_key: str) -> Step[TaskRow | None]:
        row = yield from self.one(q.SELECT_BY_DEDUPE, {"queue": queue, "dedupe_key": dedupe_key})
        return TaskRow.from_row(row) if row is not None else None

    def task(self, task_id: str) -> Step[TaskRow | None]:
        row = yield from self.one(q.SELECT_TASK, {"id": task_id})
        return TaskRow.from_row(row) if row is not None else None

    # --- claims ---------------------------------------------------------------
    def claim_next(self, p: ClaimParams) -> Step[ClaimNextRow]:
        """The common claim, in as few round trips as the backend allows: the
        owner's own lease is reported (``MINE``), else the next ready pending task
        is leased with its audit rows, else ``EXPIRED`` when an expired lease could
        be taken over (the caller's full path does that), else ``HELD`` when a task
        is held back from this owner by its lock-delay (the ``lock_delayed`` row
        written), else ``NONE``."""
        raise NotImplementedError

    def claim_many(self, p: ClaimParams, token_hashes: Sequence[str]) -> Step[list[tuple[int, LeaseRow]]]:
        """Lease up to ``len(token_hashes)`` ready tasks at once, the n-th with the
        n-th hash, each with its audit rows; (n, lease) pairs in n order."""
        raise NotImplementedError

    def next_available_at(self, queue: str) -> Step[float | None]:
        row = yield self.stmt(q.NEXT_AVAILABLE_AT, {"queue": queue}, Fetch.ONE)
        return float(row[0]) if row is not None and row[0] is not None else None

    def own_lease(self, owner: str, queue: str, now: float) -> Step[str | None]:
        row = yield self.stmt(q.SELECT_OWN_LEASE, {"owner": owner, "queue": queue, "now": now}, Fetch.ONE)
        return str(row[0]) if row is not None else None

    def next_pending(self, queue: str, owner: str, now: float) -> Step[PendingRow | None]:
        """The next task ready for ``owner``, locked against other claimers."""
        row = yield self.stmt(q.SELECT_NEXT_PENDING, {"queue": queue, "owner": owner, "now": now, "limit": 1},
                              Fetch.ONE)
        return PendingRow.from_row(row) if row is not None else None

    def expired_candidate(self, queue: str, owner: str, now: float) -> Step[CandidateRow | None]:
        """An expired lease below its retry limit whose lock-delay is over (or
        ``owner``'s own), locked against other claimers."""
        row = yield from self.one(q.SELECT_EXPIRED_CANDIDATE, {"queue": queue, "owner": owner, "now": now})
        return CandidateRow.from_row(row) if row is not None else None

    def held_back(self, queue: str, owner: str, now: float) -> Step[HeldBackRow | None]:
        """A task ``owner`` would lease but for its lock-delay."""
        row = yield from self.one(q.SELECT_HELD_BACK, {"queue": queue, "owner": owner, "now": now})
        return HeldBackRow.from_row(row) if row is not None else None

    def task_for_update(self, task_id: str) -> Step[TaskRow | None]:
        """The task's row, locked until the transaction ends."""
        return self.task(task_id)

    def acquire(self, now: float, task_id: str, fence: int, from_status: str, owner: str,
                token_hash: str, ttl: float) -> Step[LeaseRow | None]:
        row = yield self.stmt(q.ACQUIRE, {"now": now, "id": task_id, "fence": fence, "from_status": from_status,
                                          "owner": owner, "token_hash": token_hash, "ttl": ttl}, Fetch.ONE)
        return LeaseRow.from_row(row) if row is not None else None

    def resume(self, now: float, task_id: str, owner: str, token_hash: str,
               ttl: float) -> Step[LeaseRow | None]:
        row = yield from self.one(q.RESUME, {"now": now, "id": task_id, "owner": owner,
                                             "token_hash": token_hash, "ttl": ttl})
        return LeaseRow.from_row(row) if row is not None else None

    # --- holder writes ----------------------------------------------------------
    def extend(self, p: ExtendParams) -> Step[ExtendRow | None]:
        """A fenced heartbeat (and checkpoint) with its audit rows; None if refused
        (then nothing was written)."""
        raise NotImplementedError

    def release(self, p: ReleaseParams) -> Step[ReleaseRow | None]:
        """A fenced release with its audit rows (and dead letter); None if refused
        (then nothing was written)."""
        raise NotImplementedError

    def attempts(self, task_id: str) -> Step[tuple[int, int, str] | None]:
        """(attempts, max_attempts, queue) of a task, read without a lock."""
        row = yield from self.one(q.SELECT_ATTEMPTS, {"id": task_id})
        return (int(row[0]), int(row[1]), str(row[2])) if row is not None else None

    def lease_state(self, task_id: str) -> Step[LeaseStateRow | None]:
        row = yield from self.one(q.SELECT_LEASE_STATE, {"id": task_id})
        return LeaseStateRow.from_row(row) if row is not None else None

    def lease_end_event(self, task_id: str, fence: int) -> Step[tuple[str, str | None] | None]:
        """(kind, reason) of the event that ended the lease ``fence`` of a task."""
        row = yield from self.one(q.LEASE_END_EVENT, {"id": task_id, "fence": fence})
        return (str(row[0]), row[1]) if row is not None else None

    # --- ending leases without their token (recovery, operators) ------------------
    def expired_batch(self, now: float, limit: int) -> Step[list[ExpiredRow]]:
        rows = yield from self.all(q.SELECT_EXPIRED_BATCH, {"now": now, "limit": limit})
        return [ExpiredRow.from_row(r) for r in rows]

    def end_lease(self, now: float, task_id: str, fence: int, to_status: str, error: str | None) -> Step[bool]:
        """End a lease without its token; back to pending, it starts the task's
        lock-delay (see ``END_LEASE``)."""
        changed = yield from self.count(q.END_LEASE, {"id": task_id, "fence": fence, "to_status": to_status,
                                                      "holds": to_status == "pending", "error": error,
                                                      "now": now})
        return changed == 1

    # --- dead letters ------------------------------------------------------------
    def insert_dead_letter(self, now: float, task_id: str, queue: str, reason: str, attempts: int,
                           error: str | None) -> Step[int]:
        row = yield from self.one(q.INSERT_DEAD_LETTER, {"id": task_id, "queue": queue, "reason": reason,
                                                         "attempts": attempts, "error": error, "now": now})
        assert row is not None
        return int(row[0])

    def open_dead_letter(self, dead_letter_id: int) -> Step[DeadLetterRow | None]:
        row = yield from self.one(q.SELECT_OPEN_DEAD_LETTER, {"dead_letter_id": dead_letter_id})
        return DeadLetterRow.from_row(row) if row is not None else None

    def dead_letters(self, status: str, limit: int) -> Step[list[DeadLetterRow]]:
        rows = yield from self.all(q.SELECT_DEAD_LETTERS, {"status": status, "limit": limit})
        return [DeadLetterRow.from_row(r) for r in rows]

    def requeue_task(self, now: float, task_id: str) -> Step[bool]:
        changed = yield from self.count(q.REQUEUE_TASK, {"id": task_id, "now": now})
        return changed == 1

    def close_dead_letter(self, now: float, dead_letter_id: int, status: str, note: str | None) -> Step[None]:
        yield self.stmt(q.CLOSE_DEAD_LETTER, {"dead_letter_id": dead_letter_id, "now": now,
                                              "status": status, "note": note})

    # --- queue settings -----------------------------------------------------------
    def queue_settings(self, queue: str) -> Step[QueueSettingsRow | None]:
        row = yield from self.one(q.SELECT_QUEUE_SETTINGS, {"queue": queue})
        return QueueSettingsRow.from_row(row) if row is not None else None

    def all_queue_settings(self) -> Step[list[QueueSettingsRow]]:
        rows = yield from self.all(q.SELECT_ALL_QUEUE_SETTINGS)
        return [QueueSettingsRow.from_row(r) for r in rows]

    def store_queue_settings(self, row: QueueSettingsRow) -> Step[None]:
        yield self.stmt(q.UPSERT_QUEUE_SETTINGS, {"queue": row.queue, "lock_delay": row.lock_delay,
                                                  "lease_ttl": row.lease_ttl, "max_attempts": row.max_attempts,
                                                  "retry_base": row.retry_base, "retry_cap": row.retry_cap,
                                                  "now": row.updated_at})

    # --- reads ------------------------------------------------------------------
    def tasks(self, queue: str | None, status: str | None, limit: int) -> Step[list[TaskRow]]:
        rows = yield from self.all(q.SELECT_TASKS, {"queue": queue, "status": status, "limit": limit})
        return [TaskRow.from_row(r) for r in rows]

    def task_counts(self) -> Step[list[tuple[str, str, int]]]:
        rows = yield from self.all(q.COUNT_TASKS_BY_QUEUE_STATUS)
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def active_leases(self, limit: int) -> Step[list[Sequence[Any]]]:
        """(id, queue, owner, fencing_token, attempts, leased_at, lease_expires_at), oldest first."""
        return self.all(q.SELECT_ACTIVE_LEASES, {"limit": limit})

    def events(self, task_id: str | None, after_id: int, limit: int, newest: bool) -> Step[list[EventRow]]:
        """``event_log`` rows after ``after_id`` (of one task, if given): the oldest
        ``limit`` of them, or the newest when ``newest``; always returned oldest first."""
        statement = q.SELECT_EVENTS_NEWEST if newest else q.SELECT_EVENTS_AFTER
        rows = yield from self.all(statement, {"task_id": task_id, "after": after_id, "limit": limit})
        found = [EventRow.from_row(r) for r in rows]
        if newest:
            found.reverse()
        return found

    def events_page(self, queue: str | None, after_id: int, limit: int) -> Step[list[EventRow]]:
        """A page of the whole log (or one queue's) in id order."""
        rows = yield from self.all(q.SELECT_EVENT_PAGE, {"queue": queue, "after": after_id, "limit": limit})
        return [EventRow.from_row(r) for r in rows]

    def task_status_page(self, queue: str | None, after_id: str,
                         limit: int) -> Step[list[tuple[str, str, bool]]]:
        """(id, status, whether it holds a result) of tasks after ``after_id``, in id order."""
        rows = yield from self.all(q.SELECT_TASK_STATUS_PAGE, {"queue": queue, "after": after_id, "limit": limit})
        return [(str(r[0]), str(r[1]), bool(r[2])) for r in rows]

    def lock_outcome_counts(self, queue: str | None) -> Step[list[tuple[str, int]]]:
        rows = yield from self.all(q.COUNT_LOCK_OUTCOMES, {"queue": queue})
        return [(str(r[0]), int(r[1])) for r in rows]

    # --- metrics ------------------------------------------------------------------
    def windowed_event_counts(self, since: float) -> Step[list[tuple[str, str | None, int]]]:
        """(kind, reason, count) of the events the metrics count, since ``since``."""
        rows = yield from self.all(q.COUNT_METRIC_EVENTS_SINCE, {"since": since})
        return [(str(r[0]), r[1], int(r[2])) for r in rows]

    def windowed_lock_counts(self, since: float) -> Step[list[tuple[str, int]]]:
        """(outcome, count) of the lock outcomes the metrics count, since ``since``."""
        rows = yield from self.all(q.COUNT_METRIC_LOCK_EVENTS_SINCE, {"since": since})
        return [(str(r[0]), int(r[1])) for r in rows]

    def open_dead_letter_count(self) -> Step[int]:
        row = yield from self.one(q.COUNT_OPEN_DEAD_LETTERS)
        assert row is not None
        return int(row[0])

    def event_kinds_in_order(self) -> Step[list[tuple[float, str, str | None]]]:
        """(ts, kind, reason) of every event, in id order."""
        rows = yield from self.all(q.SELECT_EVENT_KINDS)
        return [(float(r[0]), str(r[1]), r[2]) for r in rows]

    def lock_outcomes_since(self, since: float) -> Step[list[tuple[float, str]]]:
        rows = yield from self.all(q.SELECT_LOCK_OUTCOMES_SINCE, {"since": since})
        return [(float(r[0]), str(r[1])) for r in rows]

    def insert_alert(self, now: float, metric: str, value: float, threshold: float,
                     window_minutes: float) -> Step[None]:
        yield self.stmt(q.INSERT_ALERT, {"now": now, "metric": metric, "value": value,
                                         "threshold": threshold, "window_minutes": window_minutes})

    def leases_by_queue(self) -> Step[list[tuple[str, int, float]]]:
        rows = yield from self.all(q.LEASES_BY_QUEUE)
        return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def ready_pending_by_queue(self, now: float) -> Step[list[tuple[str, float]]]:
        rows = yield from self.all(q.READY_PENDING_BY_QUEUE, {"now": now})
        return [(str(r[0]), float(r[1])) for r in rows]

    def first_unsettled_id(self, grouping: q.Grouping, after: int, cutoff: float) -> Step[int | None]:
        row = yield from self.one(q.FIRST_UNSETTLED[grouping], {"after": after, "cutoff": cutoff})
        return int(row[0]) if row is not None and row[0] is not None else None

    def grouped_counts(self, grouping: q.Grouping, after: int, before: int) -> Step[list[Sequence[Any]]]:
        """(*group, count, max id) of the rows with ``after < id < before``."""
        return self.all(q.GROUPED_COUNTS[grouping], {"after": after, "before": before})

    def audit_top_id(self, table: q.AuditTable) -> Step[int]:
        """The highest id this snapshot sees in ``table`` (0 when empty)."""
        row = yield from self.one(q.AUDIT_TOP_ID[table])
        return int(row[0]) if row is not None else 0

    def audit_tail(self, table: q.AuditTable, after: int, upto: int, keep_from: float,
                   width: float) -> Step[list[Sequence[Any]]]:
        """(*totals grouping, bucket or None, *metric key, count) of the rows with
        ``after < id <= upto``; the bucket is None unless the row is one of the
        seven's with ``ts >= keep_from``."""
        return self.all(q.AUDIT_TAIL[table], {"after": after, "upto": upto, "keep_from": keep_from, "width": width})

    def audit_id_gaps(self, table: q.AuditTable, after: int, upto: int,
                      cutoff: float) -> Step[list[tuple[int, int]]]:
        """(first, last) of each run of ids missing from ``after < id <= upto``
        whose next present row has ``ts > cutoff``."""
        rows = yield from self.all(q.AUDIT_ID_GAPS[table], {"after": after, "upto": upto, "cutoff": cutoff})
        return [(int(r[0]) + 1, int(r[1]) - 1) for r in rows]

    def audit_rows_in(self, table: q.AuditTable, ranges: Sequence[tuple[int, int]], keep_from: float,
                      width: float) -> Step[list[Sequence[Any]]]:
        """(id, *totals grouping, bucket or None, *metric key) of each row whose id
        lies in one of ``ranges`` (inclusive (first, last) pairs)."""
        found: list[Sequence[Any]] = []
        for start in range(0, len(ranges), q.AUDIT_RANGE_SLOTS):
            batch = list(ranges[start:start + q.AUDIT_RANGE_SLOTS])
            batch += [(1, 0)] * (q.AUDIT_RANGE_SLOTS - len(batch))
            params: dict[str, Any] = {"keep_from": keep_from, "width": width}
            for i, (lo, hi) in enumerate(batch):
                params[f"lo{i}"], params[f"hi{i}"] = lo, hi
            found += yield from self.all(q.AUDIT_ROWS_IN[table], params)
        return found

    def audit_window_buckets(self, table: q.AuditTable, since: float, until: float,
                             width: float) -> Step[list[Sequence[Any]]]:
        """(bucket, *metric key, count) of the seven's rows with ``since <= ts < until``."""
        return self.all(q.AUDIT_WINDOW_BUCKETS[table], {"since": since, "until": until, "width": width})

    # --- the store's time (SQLite's high-water mark) -----------------------------------
    def clock_high_water(self) -> Step[float | None]:
        """The latest clock any writer used, where writers read their own clocks;
        None where the server's clock is the only one."""
        return None
        yield  # pragma: no cover - makes this a step that yields nothing

    def set_clock_high_water(self, now: float) -> Step[None]:
        """Move the store's time to ``now`` (an operator's reset after a clock was fixed)."""
        yield from ()

    # --- schema -----------------------------------------------------------------------
    def schema_extras(self) -> list[str]:
        """DDL beyond the tables (append-only triggers); idempotent."""
        raise NotImplementedError

    def lock_schema(self) -> Step[None]:
        """Serialise concurrent ``init-db`` runs (inside the schema transaction)."""
        yield from ()

    def stored_schema_version(self) -> Step[int | None]:
        row = yield from self.one(q.SELECT_SCHEMA_VERSION)
        return int(row[0]) if row else None

    def store_schema_version(self, version: int, *, update: bool) -> Step[None]:
        yield self.stmt(q.UPDATE_SCHEMA_VERSION if update else q.INSERT_SCHEMA_VERSION, {"v": str(version)})

    def close(self) -> None:
        """Let go of what the driver holds beside its connections."""

    # --- errors -----------------------------------------------------------------------
    def translate_error(self, exc: BaseException) -> errors.LeaseStoreError | None:
        """The typed error for a driver error, or None if it is not one."""
        raise NotImplementedError

    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether the connection that raised ``exc`` must be thrown away."""
        return False
