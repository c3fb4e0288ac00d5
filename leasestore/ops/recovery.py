"""``recover_stale``: expired leases back to pending, or dead-lettered at their
retry limit, in batches, one savepoint per row."""

from __future__ import annotations

import logging

from .. import errors, validation
from ..db import audit
from ..db.driver import Driver, Step
from ..db.engine import Op
from ..db.rows import ExpiredRow
from ..failpoints import FailpointError, failpoint
from ..states import LockOp, LockOutcome, TaskStatus
from ..types import RecoveryReport
from .common import Context

DEFAULT_RECOVER_BATCH = 100
LEASE_EXPIRED_ON_LAST_ATTEMPT = "lease expired on the last attempt"

log = logging.getLogger("leasestore.recover")


def recover_batch(ctx: Context, *, batch_size: int) -> Op[RecoveryReport]:
    """One batch; the faces loop until a batch comes back short (see
    :meth:`leasestore.LeaseStore.recover_stale`)."""
    batch_size = validation.positive_int(batch_size, "batch_size", 10_000)
    d = ctx.driver
    return lambda: d.write(lambda now: _batch(d, now, batch_size))


def validate_sweep(batch_size: int, max_batches: int) -> tuple[int, int]:
    return (validation.positive_int(batch_size, "batch_size", 10_000),
            validation.positive_int(max_batches, "max_batches", 1_000_000))


def done(totals: RecoveryReport) -> RecoveryReport:
    if totals.scanned:
        log.info("recover_stale: %s", totals)
    return totals


def _batch(d: Driver, now: float, batch_size: int) -> Step[RecoveryReport]:
    rows = yield from d.expired_batch(now, batch_size)
    recovered = dead = skipped = failed = 0
    for row in rows:
        yield from d.savepoint()
        try:
            failpoint("recover_update")
            if row.attempts >= row.max_attempts:
                changed = yield from expire_to_dead_letter(d, now, row.task_id, row.queue, row.owner,
                                                           row.fencing_token, row.attempts, op=LockOp.RECOVER)
                dead += changed
            else:
                changed = yield from _recover_one(d, now, row)
                recovered += changed
            skipped += not changed
            yield from d.release_savepoint()
        except (FailpointError, errors.LeaseStoreError) as exc:
            if isinstance(exc, errors.StoreUnavailable):
                raise
            # One row that cannot be recovered must not hold back the others.
            yield from d.rollback_to_savepoint()
            failed += 1
            yield from d.insert_lock_event(now, audit.lock_outcome(
                row.task_id, row.queue, row.owner, LockOp.RECOVER, LockOutcome.RECOVER_FAILED,
                row.fencing_token, detail={"error": str(exc)[:500]}))
    return RecoveryReport(len(rows), recovered, dead, skipped, failed)


def _recover_one(d: Driver, now: float, row: ExpiredRow) -> Step[bool]:
    changed = yield from d.end_lease(now, row.task_id, row.fencing_token, TaskStatus.PENDING, "lease expired")
    if not changed:
        return False
    yield from d.insert_event(now, audit.recovered(row))
    yield from d.insert_lock_event(now, audit.lock_outcome(row.task_id, row.queue, row.owner, LockOp.RECOVER,
                                                           LockOutcome.RECOVERED, row.fencing_token))
    return True


def expire_to_dead_letter(d: Driver, now: float, task_id: str, queue: str, holder: str | None, fence: int,
                          attempts: int, *, op: LockOp) -> Step[bool]:
    """Dead-letter an expired lease at its retry limit; False if it changed meanwhile."""
    changed = yield from d.end_lease(now, task_id, fence, TaskStatus.DEAD, LEASE_EXPIRED_ON_LAST_ATTEMPT)
    if not changed:
        return False
    dead_letter_id = yield from d.insert_dead_letter(now, task_id, queue, "lease_expired", attempts,
                                                     LEASE_EXPIRED_ON_LAST_ATTEMPT)
    yield from d.insert_event(now, audit.expired_dead_letter(task_id, queue, holder, fence, attempts,
                                                             dead_letter_id))
    yield from d.insert_lock_event(now, audit.lock_outcome(task_id, queue, holder, op,
                                                           LockOutcome.RECOVER_DEAD_LETTERED, fence))
    return True
