"""The audit vocabulary: which ``event_log`` and ``lock_events`` rows each
outcome writes. Both faces and both backends build their rows here, so a
change of state always reads the same in the log."""

from __future__ import annotations

import functools

from ..states import EventKind, LockOp, LockOutcome, TaskStatus
from .driver import Event, LockEvent, ReleaseParams, dumps
from .rows import CandidateRow, ExpiredRow, ExtendRow, HeldBackRow, LeaseRow, ReleaseRow

# Enum members of the claim and release paths, read once (see leasestore.states).
_CLAIMED, _RETRY_SCHEDULED = EventKind.CLAIMED, EventKind.RETRY_SCHEDULED
_LEASED = TaskStatus.LEASED
_CLAIM, _RELEASE = LockOp.CLAIM, LockOp.RELEASE
_RELEASED = LockOutcome.RELEASED

# The event that ended a lease, as a refused holder is told it.
END_REASONS = {
    EventKind.TAKEN_OVER.value: "taken_over",
    EventKind.RELEASED.value: "released",
    EventKind.RETRY_SCHEDULED.value: "released",
    EventKind.RECOVERED.value: "recovered",
    EventKind.REVOKED.value: "revoked",
}


def end_reason(kind: str, reason: str | None) -> str:
    if kind == EventKind.DEAD_LETTERED:
        return "recovered" if reason == "lease_expired" else "released"
    return END_REASONS.get(kind, kind)


# A claim that named its task was not the queue's choice: the history check's
# priority order skips it.
_NAMED: dict[str, object] = {"named": True}


def claimed(lease: LeaseRow, from_status: str, *, named: bool = False) -> Event:
    return Event(lease.task_id, lease.queue, _CLAIMED, from_status, _LEASED, lease.owner, lease.fencing_token,
                 lease.attempt, None, _NAMED if named else None)


def taken_over(lease: LeaseRow, previous: CandidateRow) -> Event:
    return Event(lease.task_id, lease.queue, EventKind.TAKEN_OVER, TaskStatus.LEASED, TaskStatus.LEASED,
                 owner=lease.owner, fence=lease.fencing_token, attempt=lease.attempt, reason="lease_expired",
                 detail={"previous_owner": previous.owner, "previous_fencing_token": previous.fencing_token,
                         "previous_expires_at": previous.expires_at,
                         **lock_delay_detail(previous.expires_at, previous.lock_delay)})


def lock_delayed(held: HeldBackRow, queue: str, claimer: str) -> LockEvent:
    return LockEvent(held.task_id, queue, claimer, LockOp.CLAIM, LockOutcome.LOCK_DELAYED, held.fencing_token,
                     detail={"held_until": held.held_until})


def lock_delay_detail(expires_at: float, lock_delay: float) -> dict[str, float]:
    """What an event that ends a lease unreleased says of the delay it starts
    (the history check reads these keys)."""
    return {"lock_delay": lock_delay, "held_until": expires_at + lock_delay} if lock_delay > 0 else {}


def claim_outcome(lease: LeaseRow, outcome: LockOutcome) -> LockEvent:
    return LockEvent(lease.task_id, lease.queue, lease.owner, _CLAIM, outcome, lease.fencing_token)


def busy(task_id: str, queue: str, claimer: str, fence: int) -> LockEvent:
    return LockEvent(task_id, queue, claimer, LockOp.CLAIM, LockOutcome.BUSY, fence)


def extended(task_id: str, row: ExtendRow) -> LockEvent:
    return LockEvent(task_id, row.queue, row.owner, LockOp.HEARTBEAT, LockOutcome.EXTENDED, row.fencing_token)


def checkpointed(task_id: str, row: ExtendRow) -> Event:
    return Event(task_id, row.queue, EventKind.CHECKPOINTED, TaskStatus.LEASED, TaskStatus.LEASED,
                 owner=row.owner, fence=row.fencing_token)


@functools.cache
def release_lock_detail(result: str) -> str:
    """The lock row's detail of a release: ``{"outcome": <done|retry_scheduled|dead_lettered>}``."""
    detail = dumps({"outcome": result})
    assert detail is not None
    return detail


# A done release that stored a result says so (the history check's result_once).
RESULT_DETAIL: dict[str, object] = {"result": True}


def released(p: ReleaseParams, row: ReleaseRow) -> Event:
    if p.event_kind == _RETRY_SCHEDULED:
        detail: dict[str, object] | None = {"retry_at": row.available_at}
    elif p.dead_letter_reason is not None:
        detail = {"dead_letter_id": row.dead_letter_id}
    elif p.result is not None:
        detail = RESULT_DETAIL
    else:
        detail = None
    return Event(p.task_id, row.queue, p.event_kind, _LEASED, p.to_status, row.owner, p.fence, p.attempt,
                 p.event_reason, detail)


def release_outcome(p: ReleaseParams, row: ReleaseRow) -> LockEvent:
    return LockEvent(p.task_id, row.queue, row.owner, _RELEASE, _RELEASED, p.fence, p.lock_outcome_detail)


def conflict(task_id: str, queue: str, holder: str | None, op: LockOp, fence: int, reason: str,
             current: int) -> LockEvent:
    return LockEvent(task_id, queue, holder, op, LockOutcome.CONFLICT, fence,
                     detail={"reason": reason, "current_fencing_token": current})


def recovered(row: ExpiredRow) -> Event:
    return Event(row.task_id, row.queue, EventKind.RECOVERED, TaskStatus.LEASED, TaskStatus.PENDING,
                 owner=row.owner, fence=row.fencing_token, attempt=row.attempts, reason="lease_expired",
                 detail=lock_delay_detail(row.expires_at, row.lock_delay) or None)


def expired_dead_letter(task_id: str, queue: str, holder: str | None, fence: int, attempts: int,
                        dead_letter_id: int) -> Event:
    return Event(task_id, queue, EventKind.DEAD_LETTERED, TaskStatus.LEASED, TaskStatus.DEAD, owner=holder,
                 fence=fence, attempt=attempts, reason="lease_expired", detail={"dead_letter_id": dead_letter_id})


def clock_behind(now: float, high_water: float) -> LockEvent:
    return LockEvent(None, None, None, LockOp.WRITE, LockOutcome.CLOCK_BEHIND, None,
                     detail={"writer_clock": now, "behind_seconds": round(high_water - now, 6)})


def lock_outcome(task_id: str, queue: str, holder: str | None, op: LockOp, outcome: LockOutcome,
                 fence: int, detail: dict[str, object] | None = None) -> LockEvent:
    return LockEvent(task_id, queue, holder, op, outcome, fence, detail)


def settings_changed(queue: str, changes: dict[str, object]) -> LockEvent:
    return LockEvent(None, queue, None, LockOp.CONFIGURE, LockOutcome.SETTINGS_CHANGED, None, detail=changes)
