"""The claim decision: resume the owner's own lease, lease the next pending
task, take over an expired lease, dead-letter one at its limit, or answer busy."""

from __future__ import annotations

import logging
import time

from .. import errors, validation
from ..db import audit
from ..db.driver import ClaimNextKind, ClaimParams, Step
from ..db.engine import Op
from ..db.rows import CandidateRow, HeldBackRow, LeaseRow, TaskRow
from ..failpoints import failpoint
from ..states import LockOp, LockOutcome, TaskStatus
from ..types import ClaimResult, ClaimStatus, Lease
from . import queues
from .common import Context, hash_token, new_token, to_lease
from .recovery import expire_to_dead_letter

log = logging.getLogger("leasestore.claim")

# Enum members of the claim path, read once (see leasestore.states).
_NEXT_ACQUIRED, _ACQUIRED = ClaimNextKind.ACQUIRED, ClaimStatus.ACQUIRED


def claim_task(ctx: Context, queue: str | None, owner: str, *, task_id: str | None, ttl: float | None,
               additional: bool) -> Op[ClaimResult]:
    """See :meth:`leasestore.LeaseStore.claim_task`."""
    owner = validation.name(owner, "owner")
    ttl = None if ttl is None else validation.ttl(ttl)
    if task_id is None and queue is None:
        raise errors.InvalidArgument("claim_task needs a queue or a task_id")
    if queue is not None:
        queue = validation.name(queue, "queue")
    if task_id is not None:
        task_id = validation.name(task_id, "task id")
    token = new_token()
    claim = _Claim(ctx, queue, owner, task_id, ttl, additional, token)
    return claim.step


class _Claim:
    def __init__(self, ctx: Context, queue: str | None, owner: str, task_id: str | None, ttl: float | None,
                 additional: bool, token: str) -> None:
        self.ctx = ctx
        self.d = ctx.driver
        self.queue = queue
        self.owner = owner
        self.task_id = task_id
        self.asked_ttl = ttl  # None: the queue's, else the store's default
        self.ttl = ctx.default_ttl
        self.additional = additional
        self.token = token
        self.token_hash = hash_token(token)

    def step(self) -> Step[ClaimResult]:
        if self.task_id is None:
            assert self.queue is not None
            # (the asked TTL without a nested step: this is the claim path every agent takes)
            self.ttl = self.asked_ttl if self.asked_ttl is not None else (yield from self._ttl(self.queue))
            found = yield from self.d.claim_next(
                ClaimParams(self.queue, self.owner, self.token_hash, self.ttl, resume=not self.additional))
            if found.kind is _NEXT_ACQUIRED:
                assert found.lease is not None
                result = self._acquired(found.lease, took_over=False)
            elif found.kind is ClaimNextKind.NONE:
                result = ClaimResult(ClaimStatus.NO_TASK)
            elif found.kind is ClaimNextKind.HELD:
                result = yield from self._held_until(found.task_id)
            else:  # the owner's own lease to resume, or an expired one to take over
                result = yield from self.d.write(self._next)
        else:
            result = yield from self.d.write(self._named)
        log.debug("claim %s/%s by %s: %s", self.queue, self.task_id, self.owner, result.status)
        return result

    def _next(self, now: float) -> Step[ClaimResult]:
        assert self.queue is not None
        if not self.additional:
            own = yield from self.d.own_lease(self.owner, self.queue, now)
            if own is not None:
                return (yield from self._resume(now, own))
        pending = yield from self.d.next_pending(self.queue, self.owner, now)
        if pending is not None:
            return (yield from self._acquire(now, pending.task_id, pending.fencing_token, None))
        expired = yield from self.d.expired_candidate(self.queue, self.owner, now)
        if expired is not None:
            return (yield from self._acquire(now, expired.task_id, expired.fencing_token, expired))
        held = yield from self.d.held_back(self.queue, self.owner, now)
        if held is not None:
            yield from self.d.insert_lock_event(now, audit.lock_delayed(held, self.queue, self.owner))
            return ClaimResult(ClaimStatus.LOCK_DELAYED, task_id=held.task_id, held_until=held.held_until)
        return ClaimResult(ClaimStatus.NO_TASK)

    def _held_until(self, task_id: str | None) -> Step[ClaimResult]:
        """The answer to a claim the driver found held back (its row is written)."""
        assert task_id is not None
        row = yield from self.d.task(task_id)
        until = None
        if row is not None:
            until = row.available_at if row.lease_expires_at is None else row.lease_expires_at + row.lock_delay
        return ClaimResult(ClaimStatus.LOCK_DELAYED, task_id=task_id, held_until=until)

    def _named(self, now: float) -> Step[ClaimResult]:
        assert self.task_id is not None
        row = yield from self.d.task_for_update(self.task_id)
        if row is None or (self.queue is not None and row.queue != self.queue):
            raise errors.TaskNotFound(self.task_id)
        self.ttl = yield from self._ttl(row.queue)
        # The row lock may have been waited for: judge time as of now, not as
        # of the transaction's start.
        now = yield from self.d.now()
        if row.status == TaskStatus.PENDING:
            if row.available_at > now and row.held_for is not None and row.held_for != self.owner:
                return (yield from self._delayed(now, row, row.available_at))
            if row.available_at > now and row.held_for is None:
                return ClaimResult(ClaimStatus.NO_TASK, task_id=row.id)
            return (yield from self._acquire(now, row.id, row.fencing_token, None))
        if row.status != TaskStatus.LEASED:
            return ClaimResult(ClaimStatus.NO_TASK, task_id=row.id)
        assert row.lease_expires_at is not None
        if row.lease_expires_at > now:
            if row.owner == self.owner:
                return (yield from self._resume(now, row.id))
            yield from self.d.insert_lock_event(now, audit.busy(row.id, row.queue, self.owner, row.fencing_token))
            return ClaimResult(ClaimStatus.BUSY, task_id=row.id, holder=row.owner)
        if row.attempts >= row.max_attempts:
            yield from expire_to_dead_letter(self.d, now, row.id, row.queue, row.owner, row.fencing_token,
                                             row.attempts, op=LockOp.CLAIM)
            return ClaimResult(ClaimStatus.NO_TASK, task_id=row.id)
        if row.owner != self.owner and row.lease_expires_at + row.lock_delay > now:
            return (yield from self._delayed(now, row, row.lease_expires_at + row.lock_delay))
        previous = CandidateRow(row.id, row.owner, row.fencing_token, row.lease_expires_at, row.lock_delay)
        return (yield from self._acquire(now, row.id, row.fencing_token, previous))

    def _ttl(self, queue: str) -> Step[float]:
        if self.asked_ttl is not None:
            return self.asked_ttl
        return (yield from queues.lease_ttl(self.ctx, queue))

    def _delayed(self, now: float, row: TaskRow, until: float) -> Step[ClaimResult]:
        held = HeldBackRow(row.id, row.fencing_token, until)
        yield from self.d.insert_lock_event(now, audit.lock_delayed(held, row.queue, self.owner))
        return ClaimResult(ClaimStatus.LOCK_DELAYED, task_id=row.id, held_until=until)

    def _acquire(self, now: float, task_id: str, fence: int, previous: CandidateRow | None) -> Step[ClaimResult]:
        from_status = TaskStatus.PENDING if previous is None else TaskStatus.LEASED
        lease = yield from self.d.acquire(now, task_id, fence, from_status, self.owner, self.token_hash, self.ttl)
        if lease is None:  # pragma: no cover - the row is locked by this transaction
            raise errors.InvalidTransition(f"task {task_id!r} changed during claim")
        failpoint("after_claim_update")
        if previous is None:
            yield from self.d.insert_event(now, audit.claimed(lease, from_status, named=self.task_id is not None))
            outcome = LockOutcome.ACQUIRED
        else:
            yield from self.d.insert_event(now, audit.taken_over(lease, previous))
            outcome = LockOutcome.TAKEN_OVER
        yield from self.d.insert_lock_event(now, audit.claim_outcome(lease, outcome))
        return self._acquired(lease, took_over=previous is not None)

    def _resume(self, now: float, task_id: str) -> Step[ClaimResult]:
        lease = yield from self.d.resume(now, task_id, self.owner, self.token_hash, self.ttl)
        if lease is None:  # pragma: no cover - checked under the same lock
            raise errors.InvalidTransition(f"task {task_id!r} changed during claim")
        yield from self.d.insert_lock_event(now, audit.claim_outcome(lease, LockOutcome.DUPLICATE))
        return ClaimResult(ClaimStatus.RESUMED, lease=to_lease(lease, self.token, self.ttl, took_over=False),
                           task_id=task_id)

    def _acquired(self, row: LeaseRow, *, took_over: bool) -> ClaimResult:
        lease = to_lease(row, self.token, self.ttl, took_over=took_over)
        return ClaimResult(_ACQUIRED, lease, lease.task_id)


MAX_CLAIM_MANY = 1000


def claim_many(ctx: Context, queue: str, owner: str, count: int, *, ttl: float | None) -> Op[list[Lease]]:
    """Lease up to ``count`` ready tasks of ``queue`` in one round trip, each with
    its own lease token and fencing token (highest priority, then oldest, first).
    Only pending tasks are leased: expired leases are left to ``claim_task`` and
    ``recover_stale``."""
    queue = validation.name(queue, "queue")
    owner = validation.name(owner, "owner")
    count = validation.positive_int(count, "count", MAX_CLAIM_MANY)
    asked_ttl = None if ttl is None else validation.ttl(ttl)
    tokens = [new_token() for _ in range(count)]
    hashes = [hash_token(t) for t in tokens]
    d = ctx.driver

    def step() -> Step[list[Lease]]:
        lease_ttl = asked_ttl if asked_ttl is not None else (yield from queues.lease_ttl(ctx, queue))
        leased = yield from d.claim_many(ClaimParams(queue, owner, "", lease_ttl, resume=False), hashes)
        return [to_lease(row, tokens[n], lease_ttl, took_over=False) for n, row in leased]

    return step


# A claim that waits looks again when woken, when the next delayed task of the
# queue becomes ready, and otherwise: on a notifying backend only as a fallback
# (idle waiters cost the server almost nothing), else at a backoff.
MAX_WAIT = 3600.0
NOTIFIED_FALLBACK = 30.0
POLL_FIRST = 0.01
POLL_MOST = 0.5


class WaitPlan:
    """How long a waiting claim sleeps between looks; one policy for both faces."""

    def __init__(self, queue: str | None, task_id: str | None, wait: float) -> None:
        if queue is None or task_id is not None:
            raise errors.InvalidArgument("wait applies to a claim of a queue's next task, not of a named task")
        self.queue = queue
        self.deadline = time.monotonic() + validation.seconds(wait, "wait", 0.0, MAX_WAIT)
        self._poll = POLL_FIRST

    def pause(self, notified: bool, next_ready_in: float | None) -> float:
        """Seconds to wait before the next look; 0 when the wait is over."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return 0.0
        if notified:
            step = NOTIFIED_FALLBACK
        else:
            step, self._poll = self._poll, min(self._poll * 2, POLL_MOST)
        if next_ready_in is not None:
            step = min(step, max(next_ready_in, 0.001))
        return min(step, left)


def keeps_waiting(result: ClaimResult) -> bool:
    """Whether a waiting claim looks again after this answer."""
    return result.status is ClaimStatus.NO_TASK or result.status is ClaimStatus.LOCK_DELAYED


def next_ready_in(ctx: Context, queue: str, result: ClaimResult) -> Op[float | None]:
    """Seconds until the queue's next pending task is ready, or until the
    lock-delay that held ``result`` back ends, whichever is first (None: neither)."""
    d = ctx.driver

    def body(now: float) -> Step[float | None]:
        at = yield from d.next_available_at(queue)
        if result.held_until is not None:
            at = result.held_until if at is None else min(at, result.held_until)
        return None if at is None else at - now

    return lambda: d.read(body)
