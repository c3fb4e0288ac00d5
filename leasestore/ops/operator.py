"""What operators do by hand: revoke a lease, list, requeue or resolve dead letters."""

from __future__ import annotations

from .. import errors, validation
from ..db import audit
from ..db.driver import Event, Step
from ..db.engine import Op
from ..states import DeadLetterStatus, EventKind, LockOp, LockOutcome, TaskStatus
from ..types import DeadLetterInfo
from .common import Context


def revoke_lease(ctx: Context, task_id: str, *, reason: str) -> Op[None]:
    """End whatever lease ``task_id`` has; the task goes back to pending."""
    task_id = validation.name(task_id, "task id")
    note = validation.error_text(reason)
    d = ctx.driver

    def body(now: float) -> Step[None]:
        row = yield from d.task_for_update(task_id)
        if row is None:
            raise errors.TaskNotFound(task_id)
        if row.status != TaskStatus.LEASED:
            raise errors.InvalidTransition(f"task {task_id!r} is {row.status}, not leased")
        now = yield from d.now()  # after the row lock, which may have been waited for
        yield from d.end_lease(now, task_id, row.fencing_token, TaskStatus.PENDING, note)
        yield from d.insert_event(now, Event(task_id, row.queue, EventKind.REVOKED, TaskStatus.LEASED,
                                             TaskStatus.PENDING, owner=row.owner, fence=row.fencing_token,
                                             attempt=row.attempts, reason="revoked",
                                             detail={"note": note, **audit.lock_delay_detail(
                                                 row.lease_expires_at or now, row.lock_delay)}))
        yield from d.insert_lock_event(now, audit.lock_outcome(task_id, row.queue, row.owner, LockOp.REVOKE,
                                                               LockOutcome.REVOKED, row.fencing_token))

    return lambda: d.write(body)


def list_dead_letters(ctx: Context, *, status: str, limit: int) -> Op[list[DeadLetterInfo]]:
    try:
        status = DeadLetterStatus(status)
    except ValueError:
        raise errors.InvalidArgument("status must be open, requeued or resolved") from None
    limit = validation.positive_int(limit, "limit")
    d = ctx.driver

    def body(now: float) -> Step[list[DeadLetterInfo]]:
        rows = yield from d.dead_letters(status, limit)
        return [DeadLetterInfo(r.id, r.task_id, r.queue, r.reason, r.attempts, r.last_error, r.status,
                               r.created_at) for r in rows]

    return lambda: d.read(body)


def requeue_dead_letter(ctx: Context, dead_letter_id: int) -> Op[str]:
    """Put exactly one dead-lettered task back to pending with fresh attempts."""
    dead_letter_id = validation.positive_int(dead_letter_id, "dead letter id", 2**62)
    d = ctx.driver

    def body(now: float) -> Step[str]:
        dl = yield from d.open_dead_letter(dead_letter_id)
        if dl is None:
            raise errors.DeadLetterNotFound(dead_letter_id)
        if not (yield from d.requeue_task(now, dl.task_id)):
            raise errors.InvalidTransition(f"task {dl.task_id!r} is not dead-lettered")
        yield from d.close_dead_letter(now, dead_letter_id, DeadLetterStatus.REQUEUED, None)
        yield from d.insert_event(now, Event(dl.task_id, dl.queue, EventKind.REQUEUED, TaskStatus.DEAD,
                                             TaskStatus.PENDING, attempt=0,
                                             detail={"dead_letter_id": dead_letter_id}))
        return dl.task_id

    return lambda: d.write(body)


def resolve_dead_letter(ctx: Context, dead_letter_id: int, note: str | None) -> Op[str]:
    """Close a dead letter without running its task again."""
    dead_letter_id = validation.positive_int(dead_letter_id, "dead letter id", 2**62)
    note = validation.error_text(note)
    d = ctx.driver

    def body(now: float) -> Step[str]:
        dl = yield from d.open_dead_letter(dead_letter_id)
        if dl is None:
            raise errors.DeadLetterNotFound(dead_letter_id)
        yield from d.close_dead_letter(now, dead_letter_id, DeadLetterStatus.RESOLVED, note)
        yield from d.insert_event(now, Event(dl.task_id, dl.queue, EventKind.RESOLVED, TaskStatus.DEAD,
                                             TaskStatus.DEAD,
                                             detail={"dead_letter_id": dead_letter_id, "note": note}))
        return dl.task_id

    return lambda: d.write(body)
