"""The blocking face: :class:`LeaseStore`.

Each method validates its arguments and runs one operation from
:mod:`leasestore.ops` on a pooled blocking connection. The asyncio face
(:class:`leasestore.aio.AsyncLeaseStore`) runs the very same operations, so both
answer with the same results, errors and audit rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar


from . import errors, validation
from .agent import LeaseContext
from .db.driver import Clock
from .db.engine import DEFAULT_BUSY_TIMEOUT, Database, Op, open_database, sqlite_file_missing
from .db.schema import init_db, schema_version
from .states import SCHEMA_VERSION, DeadLetterStatus, ReleaseOutcome
from .ops import claim, enqueue, holder, operator, queues, reads, recovery
from .ops.common import DEFAULT_LEASE_TTL, DEFAULT_MAX_ATTEMPTS, Context
from .ops.common import UNSET
from .ops.recovery import DEFAULT_RECOVER_BATCH
from .retry import RetryPolicy
from .settings import resolve_database_url
from .types import (
    ClaimResult,
    QueueSettings,
    ClockStatus,
    DeadLetterInfo,
    EnqueueResult,
    HeartbeatResult,
    Lease,
    LeaseLike,
    RecoveryReport,
    ReleaseResult,
    TaskInfo,
)

T = TypeVar("T")

# Larger than any slew NTP makes, smaller than the TTLs agents use.
DEFAULT_CLOCK_TOLERANCE = 5.0

__all__ = ["DEFAULT_LEASE_TTL", "DEFAULT_MAX_ATTEMPTS", "DEFAULT_CLOCK_TOLERANCE", "DEFAULT_RECOVER_BATCH", "LeaseStore", "StoreSettings"]


def open_store_database(url: str | None, *, init: bool, busy_timeout: float, fair_writes: bool,
                        clock: Clock) -> Database:
    """The database both faces open: the URL resolved, a missing SQLite file
    refused when the schema is not to be created."""
    resolved = resolve_database_url(url)
    if not init and sqlite_file_missing(resolved):
        raise errors.SchemaNotInitialized(f"no database at {resolved.database}: run `leasestore init-db`")
    return open_database(resolved, clock=clock, busy_timeout=busy_timeout, fair_writes=fair_writes)


class StoreSettings:
    """What both faces hold: the resolved database, the clock and the settings
    every operation reads."""

    def __init__(self, url: str | None, *, init: bool, busy_timeout: float, retry_policy: RetryPolicy | None,
                 default_ttl: float, fair_writes: bool, clock_offset: float, clock_tolerance: float | None) -> None:
        if clock_tolerance is not None:
            clock_tolerance = validation.seconds(clock_tolerance, "clock_tolerance", 0.0, 86_400.0)
        self.clock = Clock(clock_offset, clock_tolerance)
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_ttl = validation.ttl(default_ttl)
        self._db = open_store_database(url, init=init, busy_timeout=busy_timeout, fair_writes=fair_writes,
                                       clock=self.clock)
        self.url = self._db.url
        self._ctx = Context(self._db.driver, self.default_ttl, self.retry_policy)

    @property
    def backend(self) -> str:
        return self._db.driver.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.render_as_string(hide_password=True)!r})"


class LeaseStore(StoreSettings):
    """A persistent lease store on SQLite (default) or PostgreSQL.

    Parameters
    ----------
    url:
        SQLAlchemy URL or SQLite path; default from ``LEASESTORE_DATABASE_URL``,
        then ``ORCH_DB_PATH``, then ``~/.openclaw/data/orchestrator.db``.
    init:
        Create the schema if the database has none (``leasestore init-db`` does
        the same explicitly).
    busy_timeout:
        Seconds a SQLite writer waits for the write lock before ``StoreBusy``.
    retry_policy:
        Backoff between failed attempts of a task.
    default_ttl:
        Lease TTL, seconds, for claims that name none.
    clock_offset:
        Seconds added to the database clock (tests move time with it).
    clock_tolerance:
        SQLite only: how many seconds this process's clock may be behind the
        store's time (the latest clock any writer used) before its writes are
        refused with :class:`ClockBehind`; None turns the check off.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        init: bool = True,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        default_ttl: float = DEFAULT_LEASE_TTL,
        fair_writes: bool = True,
        clock_offset: float = 0.0,
        clock_tolerance: float | None = DEFAULT_CLOCK_TOLERANCE,
    ) -> None:
        super().__init__(url, init=init, busy_timeout=busy_timeout, retry_policy=retry_policy,
                         default_ttl=default_ttl, fair_writes=fair_writes, clock_offset=clock_offset,
                         clock_tolerance=clock_tolerance)
        if init:
            self.init_db(only_if_missing=True)

    # --- plumbing -----------------------------------------------------------
    @property
    def database(self) -> Database:
        """The database and its public runner (``run``/``read``/``write``)."""
        return self._db

    def close(self) -> None:
        self._db.dispose()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, op: Op[T]) -> T:
        return self._db.run(op)

    def init_db(self, *, only_if_missing: bool = False) -> int:
        """Create or upgrade the schema; idempotent. Returns the schema version."""
        if only_if_missing and schema_version(self._db) == SCHEMA_VERSION:
            return SCHEMA_VERSION
        return init_db(self._db)

    def clock_status(self) -> ClockStatus:
        """This process's clock beside the store's time (SQLite's high-water mark)."""
        return self._run(reads.clock_status(self._ctx))

    def reset_clock(self) -> ClockStatus:
        """Set the store's time to this process's clock (after a clock that ran
        ahead was fixed); returns the status as it was before."""
        return self._run(reads.reset_clock(self._ctx))

    def now(self) -> float:
        """The database clock (epoch seconds) as the store sees it."""
        return self._run(reads.now(self._ctx))

    # --- enqueue ------------------------------------------------------------
    def enqueue(self, queue: str, payload: Any = None, *, task_id: str | None = None,
                max_attempts: int | None = None, dedupe_key: str | None = None,
                delay: float = 0.0, priority: int = 0,
                lock_delay: float | None = None, connection: Any = None) -> EnqueueResult:
        """Add a task. A repeated ``dedupe_key`` (or ``task_id``) in the same queue
        returns the existing task with ``created=False`` instead of a second one.
        Higher ``priority`` tasks are claimed first (then the oldest).
        ``max_attempts`` and ``lock_delay`` default to the queue's settings (see
        :meth:`set_queue_settings`), else 3 attempts and no lock-delay.

        With ``connection`` (PostgreSQL: a psycopg or SQLAlchemy connection with
        a transaction of yours), the task is added inside that transaction: it
        exists, and waiting claimers hear of it, only once you commit."""
        return self.enqueue_many(queue, [payload], task_ids=None if task_id is None else [task_id],
                                 max_attempts=max_attempts,
                                 dedupe_keys=None if dedupe_key is None else [dedupe_key], delay=delay,
                                 priority=priority, lock_delay=lock_delay, connection=connection)[0]

    def enqueue_many(self, queue: str, payloads: Sequence[Any], *, task_ids: Sequence[str] | None = None,
                     max_attempts: int | None = None, dedupe_keys: Sequence[str | None] | None = None,
                     delay: float = 0.0, priority: int = 0,
                     lock_delay: float | None = None, connection: Any = None) -> list[EnqueueResult]:
        """Add many tasks in one transaction (all or none); in yours with ``connection``."""
        op = enqueue.enqueue_many(
            self._ctx, queue, payloads, task_ids=task_ids, max_attempts=max_attempts,
            dedupe_keys=dedupe_keys, delay=delay, priority=priority, lock_delay=lock_delay)
        return self._run(op) if connection is None else self._db.run_in_transaction(connection, op)

    # --- queue settings -----------------------------------------------------------
    def set_queue_settings(self, queue: str, *, lock_delay: float | None = UNSET,
                           lease_ttl: float | None = UNSET, max_attempts: int | None = UNSET,
                           retry_base: float | None = UNSET,
                           retry_cap: float | None = UNSET) -> QueueSettings:
        """Store settings of ``queue``: ``lock_delay`` (seconds after an unreleased
        lease's expiry before another owner may lease the task), ``lease_ttl`` (of
        claims that name none), ``max_attempts`` and the retry backoff
        (``retry_base``, ``retry_cap``). Settings not named are kept; None clears
        one back to the store's default. Audited as a ``settings_changed`` lock event."""
        return self._run(queues.set_queue_settings(self._ctx, queue, {
            "lock_delay": lock_delay, "lease_ttl": lease_ttl, "max_attempts": max_attempts,
            "retry_base": retry_base, "retry_cap": retry_cap}))

    def queue_settings(self, queue: str) -> QueueSettings:
        """The stored settings of ``queue`` (None where the store's default applies)."""
        return self._run(queues.queue_settings(self._ctx, queue))

    def list_queue_settings(self) -> list[QueueSettings]:
        """Every queue that has stored settings."""
        return self._run(queues.all_queue_settings(self._ctx))

    # --- the holder's operations ------------------------------------------------
    def claim_task(self, queue: str | None = None, owner: str = "", *, task_id: str | None = None,
                   ttl: float | None = None, additional: bool = False, wait: float | None = None) -> ClaimResult:
        """Lease the next available task of ``queue`` (or the task ``task_id``).

        Results: ``acquired`` (new lease; ``lease.took_over`` when an expired
        lease was taken over), ``resumed`` (the owner already held it:
        duplicateSuppressed, same fencing token, fresh secret token), ``busy``
        (another owner holds an unexpired lease; recorded as a lock conflict) or
        ``noTask``. Unless ``additional`` is true, an owner that already holds an
        unexpired lease in the queue gets that lease back first.

        With ``wait`` (seconds), a claim that finds nothing waits for a task
        instead of answering ``noTask`` at once: on PostgreSQL it is woken by
        LISTEN/NOTIFY the moment a task becomes pending; on SQLite it looks
        again at a short backoff.
        """
        op = claim.claim_task(self._ctx, queue, owner, task_id=task_id, ttl=ttl, additional=additional)
        if wait is None:
            return self._db.run(op)
        plan = claim.WaitPlan(queue, task_id, wait)
        result = self._run(op)
        if not claim.keeps_waiting(result):
            return result
        waiter = self._db.ready_listener()
        try:
            while True:
                # Listening now: a task that became ready before is seen by this look.
                result = self._run(op)
                if not claim.keeps_waiting(result):
                    return result
                pause = plan.pause(waiter.notified, self._run(claim.next_ready_in(self._ctx, plan.queue, result)))
                if pause <= 0:
                    return result
                waiter.wait(plan.queue, pause)
        finally:
            waiter.close()

    def claim_many(self, queue: str, owner: str, count: int, *, ttl: float | None = None) -> list[Lease]:
        """Lease up to ``count`` ready tasks in one round trip, each with its own
        lease token and fencing token (higher priority, then older, first).
        Pending tasks only: expired leases are left to ``claim_task``/``recover_stale``."""
        return self._run(claim.claim_many(self._ctx, queue, owner, count, ttl=ttl))

    def heartbeat(self, lease: LeaseLike, *, ttl: float | None = None, checkpoint: Any = UNSET,
                  connection: Any = None) -> HeartbeatResult:
        """Extend a lease (and optionally store a checkpoint for the next attempt).

        Raises :class:`LeaseLost` (or its subclass :class:`StaleLeaseToken`)
        with the reason when the lease is no longer held by this token; the
        refusal is recorded as a lock conflict and nothing else changes.

        With ``connection`` (see :meth:`release_task`), the checkpoint commits or
        rolls back with your transaction.
        """
        op = holder.heartbeat(self._ctx, lease, ttl=ttl, checkpoint=checkpoint, in_caller_tx=connection is not None)
        return self._run_holder(op, connection)

    def release_task(self, lease: LeaseLike, outcome: ReleaseOutcome | str = ReleaseOutcome.DONE,
                     error: Any = None, *, retry_in: float | None = None, result: Any = None,
                     connection: Any = None) -> ReleaseResult:
        """End a lease: ``done`` (with an optional JSON ``result``, kept with the
        task), or ``failed`` with ``error`` text.

        A failed task below its retry limit returns to pending after the retry
        policy's backoff (or ``retry_in`` seconds); at the limit it becomes a
        dead letter. A stale token raises :class:`LeaseLost` and changes nothing.

        With ``connection`` (PostgreSQL: a psycopg ``Connection`` or a SQLAlchemy
        ``Connection`` with a transaction of yours), the release is written in
        that transaction, inside a savepoint, and commits or rolls back with your
        own rows; the fencing check is made there too. A refusal raises
        :class:`LeaseLost` (roll back) and is recorded on the store's own
        connection, so the conflict row outlives your rollback.
        """
        op = holder.release_task(self._ctx, lease, outcome, error, retry_in=retry_in, result=result,
                                 in_caller_tx=connection is not None)
        return self._run_holder(op, connection)

    def _run_holder(self, op: Op[T], connection: Any) -> T:
        if connection is None:
            return self._db.run(op)
        try:
            return self._db.run_in_transaction(connection, op)
        except holder.RefusedInCallerTransaction as refused:
            self._run(holder.record_refusal(self._ctx, refused))

    def wait_for(self, task_id: str, timeout: float) -> TaskInfo:
        """Block until the task is done or dead-lettered and return it (its
        ``result`` included); :class:`WaitTimeout` after ``timeout`` seconds."""
        timeout = validation.seconds(timeout, "timeout", 0.0, 86_400.0)
        look = reads.get_task(self._ctx, task_id)
        for pause in reads.wait_poll_intervals(timeout):
            info = self._run(look)
            if reads.finished(info):
                return info
            time.sleep(pause)
        info = self._run(look)
        if reads.finished(info):
            return info
        raise reads.not_finished(info, timeout)

    def lease(self, queue: str, owner: str, *, ttl: float | None = None, task_id: str | None = None,
              additional: bool = False, heartbeat_interval: float | None = None) -> LeaseContext:
        """Context manager for agents: claims on enter, heartbeats in a background
        thread, releases on exit (see :class:`leasestore.agent.LeaseContext`)."""
        return LeaseContext(self, queue, owner, ttl=ttl, task_id=task_id, additional=additional,
                            heartbeat_interval=heartbeat_interval)

    # --- recovery -------------------------------------------------------------
    def recover_stale(self, *, batch_size: int = DEFAULT_RECOVER_BATCH, max_batches: int = 100) -> RecoveryReport:
        """Return expired leases to pending, or dead-letter them at their retry limit.

        Safe from many processes at once: each row is changed by a conditional
        UPDATE on its fencing token, and on PostgreSQL rows locked by another
        sweeper are skipped. A row whose recovery raises is rolled back to a
        savepoint, recorded as ``recover_failed`` and counted in ``failed``.
        """
        batch_size, max_batches = recovery.validate_sweep(batch_size, max_batches)
        totals = RecoveryReport()
        for _ in range(max_batches):
            report: RecoveryReport = self._run(recovery.recover_batch(self._ctx, batch_size=batch_size))
            totals += report
            if report.scanned < batch_size:
                break
        return recovery.done(totals)

    # --- operator actions -------------------------------------------------------
    def revoke_lease(self, task_id: str, *, reason: str = "revoked by operator") -> None:
        """End whatever lease ``task_id`` has; the task goes back to pending."""
        self._run(operator.revoke_lease(self._ctx, task_id, reason=reason))

    def list_dead_letters(self, *, status: str = DeadLetterStatus.OPEN, limit: int = 100) -> list[DeadLetterInfo]:
        return self._run(operator.list_dead_letters(self._ctx, status=status, limit=limit))

    def requeue_dead_letter(self, dead_letter_id: int) -> str:
        """Put exactly one dead-lettered task back to pending with fresh attempts."""
        return self._run(operator.requeue_dead_letter(self._ctx, dead_letter_id))

    def resolve_dead_letter(self, dead_letter_id: int, note: str | None = None) -> str:
        """Close a dead letter without running its task again."""
        return self._run(operator.resolve_dead_letter(self._ctx, dead_letter_id, note))

    # --- reads ------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskInfo:
        return self._run(reads.get_task(self._ctx, task_id))

    def list_tasks(self, *, queue: str | None = None, status: str | None = None, limit: int = 100) -> list[TaskInfo]:
        return self._run(reads.list_tasks(self._ctx, queue=queue, status=status, limit=limit))

    def status_summary(self) -> dict[str, Any]:
        """Task counts by queue and status, and the active leases with their ages."""
        return self._run(reads.status_summary(self._ctx))

    def events(self, *, task_id: str | None = None, limit: int = 50, after_id: int = 0) -> list[dict[str, Any]]:
        """The newest audit rows (or those after ``after_id``), oldest first."""
        return self._run(reads.events(self._ctx, task_id=task_id, limit=limit,
                                                              after_id=after_id))
