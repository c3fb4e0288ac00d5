"""The asyncio face: :class:`AsyncLeaseStore`, the same store as coroutines.

    async with AsyncLeaseStore(url) as store:
        async with store.lease("emails", owner="agent-7", ttl=30) as job:
            if job is not None:
                ...
                await job.checkpoint({"step": 3})

Every method runs the same operation as :class:`leasestore.LeaseStore` (see
:mod:`leasestore.ops`), so results, errors, audit rows and metrics are
identical. PostgreSQL runs on psycopg's native async connections from a bounded
pool; SQLite runs each operation on a worker thread, never on the event loop.
The schema is checked (and created, with ``init=True``) on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar


from . import errors, validation
from .db.aengine import DEFAULT_POOL_SIZE, AsyncDatabase, open_async
from .db.engine import DEFAULT_BUSY_TIMEOUT, Op
from .db.schema import init_db, schema_version
from .heartbeat import HandleState, failure_text, interval_for
from .states import SCHEMA_VERSION, DeadLetterStatus, ReleaseOutcome
from .ops import claim, enqueue, holder, operator, queues, reads, recovery
from .ops.common import DEFAULT_LEASE_TTL
from .ops.common import UNSET
from .ops.recovery import DEFAULT_RECOVER_BATCH
from .retry import RetryPolicy
from .store import DEFAULT_CLOCK_TOLERANCE, StoreSettings
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

log = logging.getLogger("leasestore.heartbeat.task")

CANCELLED_ERROR = "cancelled"
# A claim or release still running when the block is cancelled is waited for at
# most this long (the lease it may have taken is then handed back).
HAND_BACK_TIMEOUT = 10.0

__all__ = ["AsyncLeaseContext", "AsyncLeaseHandle", "AsyncLeaseStore"]


class AsyncLeaseStore(StoreSettings):
    """The asyncio twin of :class:`leasestore.LeaseStore`: same arguments, same
    results and errors, every operation a coroutine.

    ``pool_size`` bounds the PostgreSQL connections this store opens (SQLite uses
    one worker thread, since it takes one writer at a time). Use ``async with`` or
    ``await store.close()``.
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
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        pool_size = validation.positive_int(pool_size, "pool_size", 1000)
        super().__init__(url, init=init, busy_timeout=busy_timeout, retry_policy=retry_policy,
                         default_ttl=default_ttl, fair_writes=fair_writes, clock_offset=clock_offset,
                         clock_tolerance=clock_tolerance)
        self._adb: AsyncDatabase = open_async(self._db, pool_size=pool_size)
        self._init = init
        self._ready = False

    # --- plumbing -----------------------------------------------------------
    @property
    def database(self) -> AsyncDatabase:
        """The database and its public runner (``run``/``read``/``write``, awaited)."""
        return self._adb

    async def close(self) -> None:
        await self._adb.close()
        await asyncio.to_thread(self._db.dispose)

    async def __aenter__(self) -> AsyncLeaseStore:
        await self._prepare()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _prepare(self) -> None:
        if not self._ready:
            if self._init:
                await self.init_db(only_if_missing=True)
            self._ready = True

    async def _run(self, op: Op[T]) -> T:
        if not self._ready:
            await self._prepare()
        return await self._adb.run(op)

    async def init_db(self, *, only_if_missing: bool = False) -> int:
        """Create or upgrade the schema; idempotent. Returns the schema version."""
        def create() -> int:
            if only_if_missing and schema_version(self._db) == SCHEMA_VERSION:
                return SCHEMA_VERSION
            return init_db(self._db)

        # DDL goes through SQLAlchemy's blocking engine: keep it off the loop.
        return await asyncio.to_thread(create)

    async def clock_status(self) -> ClockStatus:
        return await self._run(reads.clock_status(self._ctx))

    async def reset_clock(self) -> ClockStatus:
        return await self._run(reads.reset_clock(self._ctx))

    async def now(self) -> float:
        return await self._run(reads.now(self._ctx))

    # --- enqueue ------------------------------------------------------------
    async def enqueue(self, queue: str, payload: Any = None, *, task_id: str | None = None,
                      max_attempts: int | None = None, dedupe_key: str | None = None,
                      delay: float = 0.0, priority: int = 0,
                      lock_delay: float | None = None, connection: Any = None) -> EnqueueResult:
        """See :meth:`LeaseStore.enqueue`; ``connection`` is a psycopg
        ``AsyncConnection`` or a SQLAlchemy ``AsyncConnection``."""
        results = await self.enqueue_many(queue, [payload], task_ids=None if task_id is None else [task_id],
                                          max_attempts=max_attempts,
                                          dedupe_keys=None if dedupe_key is None else [dedupe_key], delay=delay,
                                          priority=priority, lock_delay=lock_delay, connection=connection)
        return results[0]

    async def enqueue_many(self, queue: str, payloads: Sequence[Any], *, task_ids: Sequence[str] | None = None,
                           max_attempts: int | None = None,
                           dedupe_keys: Sequence[str | None] | None = None,
                           delay: float = 0.0, priority: int = 0,
                           lock_delay: float | None = None, connection: Any = None) -> list[EnqueueResult]:
        op = enqueue.enqueue_many(self._ctx, queue, payloads, task_ids=task_ids, max_attempts=max_attempts,
                                  dedupe_keys=dedupe_keys, delay=delay, priority=priority, lock_delay=lock_delay)
        if connection is None:
            return await self._run(op)
        return await self._run_in(connection, op)

    # --- queue settings -----------------------------------------------------------
    async def set_queue_settings(self, queue: str, *, lock_delay: float | None = UNSET,
                                 lease_ttl: float | None = UNSET, max_attempts: int | None = UNSET,
                                 retry_base: float | None = UNSET,
                                 retry_cap: float | None = UNSET) -> QueueSettings:
        """Store settings of ``queue``: ``lock_delay`` (seconds after an unreleased
        lease's expiry before another owner may lease the task), ``lease_ttl`` (of
        claims that name none), ``max_attempts`` and the retry backoff
        (``retry_base``, ``retry_cap``). Settings not named are kept; None clears
        one back to the store's default. Audited as a ``settings_changed`` lock event."""
        return await self._run(queues.set_queue_settings(self._ctx, queue, {
            "lock_delay": lock_delay, "lease_ttl": lease_ttl, "max_attempts": max_attempts,
            "retry_base": retry_base, "retry_cap": retry_cap}))

    async def queue_settings(self, queue: str) -> QueueSettings:
        """The stored settings of ``queue`` (None where the store's default applies)."""
        return await self._run(queues.queue_settings(self._ctx, queue))

    async def list_queue_settings(self) -> list[QueueSettings]:
        """Every queue that has stored settings."""
        return await self._run(queues.all_queue_settings(self._ctx))

    # --- the holder's operations ------------------------------------------------
    async def claim_task(self, queue: str | None = None, owner: str = "", *, task_id: str | None = None,
                         ttl: float | None = None, additional: bool = False,
                         wait: float | None = None) -> ClaimResult:
        op = claim.claim_task(self._ctx, queue, owner, task_id=task_id, ttl=ttl, additional=additional)
        plan = None if wait is None else claim.WaitPlan(queue, task_id, wait)
        result = await self._run(op)
        if plan is None or not claim.keeps_waiting(result):
            return result
        waiter = await self._adb.ready_listener()
        try:
            while True:
                waiter.mark(plan.queue)
                result = await self._run(op)
                if not claim.keeps_waiting(result):
                    waiter.passed_on(plan.queue)
                    return result
                pause = plan.pause(waiter.notified, await self._run(claim.next_ready_in(self._ctx, plan.queue, result)))
                if pause <= 0:
                    return result
                await waiter.wait(plan.queue, pause)
        finally:
            await waiter.close()

    async def claim_many(self, queue: str, owner: str, count: int, *, ttl: float | None = None) -> list[Lease]:
        return await self._run(claim.claim_many(self._ctx, queue, owner, count, ttl=ttl))

    async def heartbeat(self, lease: LeaseLike, *, ttl: float | None = None,
                        checkpoint: Any = UNSET, connection: Any = None) -> HeartbeatResult:
        return await self._run_holder(holder.heartbeat(self._ctx, lease, ttl=ttl, checkpoint=checkpoint,
                                                       in_caller_tx=connection is not None), connection)

    async def release_task(self, lease: LeaseLike, outcome: ReleaseOutcome | str = ReleaseOutcome.DONE,
                           error: Any = None, *, retry_in: float | None = None,
                           result: Any = None, connection: Any = None) -> ReleaseResult:
        """See :meth:`LeaseStore.release_task`; ``connection`` is a psycopg
        ``AsyncConnection`` or a SQLAlchemy ``AsyncConnection``."""
        return await self._run_holder(holder.release_task(self._ctx, lease, outcome, error, retry_in=retry_in,
                                                          result=result, in_caller_tx=connection is not None),
                                      connection)

    async def _run_in(self, connection: Any, op: Op[T]) -> T:
        if not self._ready:
            await self._prepare()
        return await self._adb.run_in_transaction(connection, op)

    async def _run_holder(self, op: Op[T], connection: Any) -> T:
        if connection is None:
            return await self._run(op)
        try:
            return await self._run_in(connection, op)
        except holder.RefusedInCallerTransaction as refused:
            await self._run(holder.record_refusal(self._ctx, refused))

    async def wait_for(self, task_id: str, timeout: float) -> TaskInfo:
        """Wait (without blocking the loop) until the task is done or dead-lettered."""
        timeout = validation.seconds(timeout, "timeout", 0.0, 86_400.0)
        look = reads.get_task(self._ctx, task_id)
        for pause in reads.wait_poll_intervals(timeout):
            info = await self._run(look)
            if reads.finished(info):
                return info
            await asyncio.sleep(pause)
        info = await self._run(look)
        if reads.finished(info):
            return info
        raise reads.not_finished(info, timeout)

    def lease(self, queue: str, owner: str, *, ttl: float | None = None, task_id: str | None = None,
              additional: bool = False, heartbeat_interval: float | None = None) -> AsyncLeaseContext:
        """``async with store.lease(...) as job``: claims, heartbeats on a task,
        releases on exit; a cancelled block hands its task back at once."""
        return AsyncLeaseContext(self, queue, owner, ttl=ttl, task_id=task_id, additional=additional,
                                 heartbeat_interval=heartbeat_interval)

    # --- recovery -------------------------------------------------------------
    async def recover_stale(self, *, batch_size: int = DEFAULT_RECOVER_BATCH,
                            max_batches: int = 100) -> RecoveryReport:
        batch_size, max_batches = recovery.validate_sweep(batch_size, max_batches)
        totals = RecoveryReport()
        for _ in range(max_batches):
            report = await self._run(recovery.recover_batch(self._ctx, batch_size=batch_size))
            totals += report
            if report.scanned < batch_size:
                break
        return recovery.done(totals)

    # --- operator actions -------------------------------------------------------
    async def revoke_lease(self, task_id: str, *, reason: str = "revoked by operator") -> None:
        await self._run(operator.revoke_lease(self._ctx, task_id, reason=reason))

    async def list_dead_letters(self, *, status: str = DeadLetterStatus.OPEN,
                                limit: int = 100) -> list[DeadLetterInfo]:
        return await self._run(operator.list_dead_letters(self._ctx, status=status, limit=limit))

    async def requeue_dead_letter(self, dead_letter_id: int) -> str:
        return await self._run(operator.requeue_dead_letter(self._ctx, dead_letter_id))

    async def resolve_dead_letter(self, dead_letter_id: int, note: str | None = None) -> str:
        return await self._run(operator.resolve_dead_letter(self._ctx, dead_letter_id, note))

    # --- reads ------------------------------------------------------------------
    async def get_task(self, task_id: str) -> TaskInfo:
        return await self._run(reads.get_task(self._ctx, task_id))

    async def list_tasks(self, *, queue: str | None = None, status: str | None = None,
                         limit: int = 100) -> list[TaskInfo]:
        return await self._run(reads.list_tasks(self._ctx, queue=queue, status=status, limit=limit))

    async def status_summary(self) -> dict[str, Any]:
        return await self._run(reads.status_summary(self._ctx))

    async def events(self, *, task_id: str | None = None, limit: int = 50,
                     after_id: int = 0) -> list[dict[str, Any]]:
        return await self._run(reads.events(self._ctx, task_id=task_id, limit=limit, after_id=after_id))


class AsyncLeaseHandle(HandleState):
    """A held lease plus what the heartbeat task learned about it."""

    def __init__(self, store: AsyncLeaseStore, lease: Lease, claim: ClaimResult, sent_at: float) -> None:
        super().__init__(lease, claim, sent_at)
        self._store = store
        self.lost: asyncio.Event = asyncio.Event()
        # One holder call at a time, and none once the block has ended: the
        # release must not overtake a heartbeat still waiting for a connection
        # (a cancelled wait can still go through on Python 3.11).
        self._calls = asyncio.Lock()
        self._ended = False

    async def heartbeat(self, checkpoint: Any = None, *, store_checkpoint: bool = False) -> HeartbeatResult:
        """Extend the lease now; waits no longer than the lease could still be valid."""
        sent_at = time.monotonic()
        remaining = self.remaining()
        if remaining <= 0:
            self.mark_lost("deadline")
            raise self.lost_error("deadline")
        result: HeartbeatResult | None = None
        try:
            async with asyncio.timeout(remaining), self._calls:
                if not self._ended:
                    result = await self._store.heartbeat(
                        self.lease, **({"checkpoint": checkpoint} if store_checkpoint else {}))
        except errors.LeaseLost as exc:
            self.mark_lost(exc.reason)
            raise
        except TimeoutError:
            self.mark_lost("unreachable")
            raise self.lost_error("unreachable") from None
        if result is None:  # the block has ended: its release decides, not this call
            raise self.lost_error("released")
        self.renewed(sent_at)
        return result

    async def checkpoint(self, data: Any) -> HeartbeatResult:
        """Store progress now; the next attempt's lease carries it."""
        return await self.heartbeat(data, store_checkpoint=True)

    def stop_calls(self) -> None:
        """No holder call starts from now on (the block is ending)."""
        self._ended = True

    async def end(self, outcome: ReleaseOutcome, error: str | None, retry_in: float | None) -> ReleaseResult:
        """Release the lease after any holder call still in flight; no call starts after it."""
        self.stop_calls()
        async with self._calls:
            return await self._store.release_task(self.lease, outcome, error, retry_in=retry_in)


async def _heartbeat_task(handle: AsyncLeaseHandle, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await handle.heartbeat()
        except errors.LeaseLost:
            return
        except errors.StoreUnavailable as exc:
            log.warning("heartbeat for %s failed, will retry: %s", handle.lease.task_id, exc)
            if handle.remaining() <= 0:
                handle.mark_lost("unreachable")
                return


class AsyncLeaseContext:
    """Claims on enter, heartbeats on an asyncio task, releases on exit.

    A cancelled block (or a cancelled claim) hands its task back at once: the
    release is ``failed`` with ``retry_in=0``, so the task is pending again for
    any agent; it counts as an attempt (and at the retry limit it is
    dead-lettered, like any failure). The cancellation then propagates.
    """

    def __init__(self, store: AsyncLeaseStore, queue: str, owner: str, *, ttl: float | None = None,
                 task_id: str | None = None, additional: bool = False,
                 heartbeat_interval: float | None = None) -> None:
        self._store = store
        self._queue = queue
        self._owner = owner
        self._ttl = ttl
        self._task_id = task_id
        self._additional = additional
        self._interval = heartbeat_interval
        self._handle: AsyncLeaseHandle | None = None
        self._beat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncLeaseHandle | None:
        sent_at = time.monotonic()
        claiming = asyncio.ensure_future(self._store.claim_task(
            self._queue, self._owner, task_id=self._task_id, ttl=self._ttl, additional=self._additional))
        try:
            claim = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The claim may commit anyway: wait for it and hand the task back.
            await self._hand_back_claim(claiming)
            raise
        if claim.lease is None:
            return None
        handle = AsyncLeaseHandle(self._store, claim.lease, claim, sent_at)
        self._handle = handle
        self._beat = asyncio.create_task(_heartbeat_task(handle, interval_for(claim.lease.ttl, self._interval)),
                                         name=f"leasestore-heartbeat-{claim.lease.task_id}")
        return handle

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        handle = self._handle
        if handle is None:
            return
        await self._stop_heartbeat(handle)
        if handle.lost.is_set():
            if exc is None:
                raise errors.LeaseLost(handle.lease.task_id, handle.lost_reason or "lost", handle.fencing_token)
            return
        if exc is None:
            release = handle.end(ReleaseOutcome.DONE, None, None)
        elif isinstance(exc, asyncio.CancelledError):
            release = handle.end(ReleaseOutcome.FAILED, CANCELLED_ERROR, 0)
        else:
            release = handle.end(ReleaseOutcome.FAILED, failure_text(exc), None)
        # Shielded: a second cancellation must not leave the task leased until its TTL.
        releasing = asyncio.ensure_future(release)
        try:
            async with asyncio.timeout(max(handle.remaining(), 0.001)):
                await asyncio.shield(releasing)
        except errors.LeaseLost as lost:
            handle.mark_lost(lost.reason)
            if exc is None:
                raise
        except TimeoutError:
            handle.mark_lost("unreachable")
            if exc is None:
                raise handle.lost_error("unreachable") from None
        except asyncio.CancelledError:
            await asyncio.wait([releasing], timeout=HAND_BACK_TIMEOUT)
            raise

    async def _stop_heartbeat(self, handle: AsyncLeaseHandle) -> None:
        beat = self._beat
        if beat is None:
            return
        handle.stop_calls()
        beat.cancel()
        # An in-flight heartbeat is bounded by the lease's remaining validity.
        await asyncio.wait([beat], timeout=max(handle.remaining(), 0.001))

    async def _hand_back_claim(self, claiming: asyncio.Future[ClaimResult]) -> None:
        done, _ = await asyncio.wait([claiming], timeout=HAND_BACK_TIMEOUT)
        if not done or claiming.cancelled() or claiming.exception() is not None:
            return
        lease = claiming.result().lease
        if lease is None:
            return
        try:
            await asyncio.wait_for(
                self._store.release_task(lease, ReleaseOutcome.FAILED, CANCELLED_ERROR, retry_in=0),
                HAND_BACK_TIMEOUT)
        except (errors.LeaseStoreError, TimeoutError) as exc:
            log.warning("could not hand back %s after a cancelled claim: %s", lease.task_id, exc)
