"""Reads: one task, a list of tasks, a status summary, the audit log, the clock."""

from __future__ import annotations

from typing import Any

from .. import errors, validation
from ..db.driver import Step
from ..db.engine import Op
from ..db.rows import TaskRow
from ..states import TaskStatus
from ..types import ClockStatus, TaskInfo
from .common import Context
from .queues import SETTING_NAMES

ACTIVE_LEASES_SHOWN = 200


def now(ctx: Context) -> Op[float]:
    d = ctx.driver
    return lambda: d.read(_clock)


def _clock(now: float) -> Step[float]:
    return now
    yield  # pragma: no cover - makes this a step that yields nothing


def clock_status(ctx: Context) -> Op[ClockStatus]:
    """This process's clock beside the store's time (see :class:`ClockStatus`)."""
    d = ctx.driver

    def body(now: float) -> Step[ClockStatus]:
        high = yield from d.clock_high_water()
        return ClockStatus(now=now, store_time=high, tolerance=d.clock.tolerance)

    return lambda: d.read(body)


def reset_clock(ctx: Context) -> Op[ClockStatus]:
    """Set the store's time to this process's clock: after a clock that ran ahead
    was fixed, the others' writes are refused until this is done (or until
    their clocks catch up)."""
    d = ctx.driver

    def body(now: float) -> Step[ClockStatus]:
        before = yield from d.clock_high_water()
        yield from d.set_clock_high_water(now)
        return ClockStatus(now=now, store_time=before, tolerance=d.clock.tolerance)

    def step() -> Step[ClockStatus]:
        # Not through write(): its clock check would refuse the very reset.
        yield from d.begin_write()
        now = yield from d.now()
        result = yield from body(now)
        yield from d.commit()
        return result

    return step


def get_task(ctx: Context, task_id: str) -> Op[TaskInfo]:
    task_id = validation.name(task_id, "task id")
    d = ctx.driver

    def body(now: float) -> Step[TaskInfo]:
        row = yield from d.task(task_id)
        if row is None:
            raise errors.TaskNotFound(task_id)
        return task_info(row)

    return lambda: d.read(body)


def list_tasks(ctx: Context, *, queue: str | None, status: str | None, limit: int) -> Op[list[TaskInfo]]:
    limit = validation.positive_int(limit, "limit")
    if queue is not None:
        queue = validation.name(queue, "queue")
    if status is not None:
        try:
            status = TaskStatus(status).value
        except ValueError:
            raise errors.InvalidArgument("status must be pending, leased, done or dead") from None
    d = ctx.driver

    def body(now: float) -> Step[list[TaskInfo]]:
        return [task_info(r) for r in (yield from d.tasks(queue, status, limit))]

    return lambda: d.read(body)


def status_summary(ctx: Context) -> Op[dict[str, Any]]:
    """Task counts by queue and status, the active leases with their ages, and
    each queue's stored settings."""
    d = ctx.driver

    def body(now: float) -> Step[dict[str, Any]]:
        counts = yield from d.task_counts()
        leases = yield from d.active_leases(ACTIVE_LEASES_SHOWN)
        settings = yield from d.all_queue_settings()
        return {
            "now": now,
            "queue_settings": [{"queue": r.queue, **{name: getattr(r, name) for name in SETTING_NAMES}}
                               for r in settings],
            "counts": [{"queue": q, "status": s, "count": n} for q, s, n in counts],
            "leases": [{"task_id": r[0], "queue": r[1], "owner": r[2], "fencing_token": int(r[3]),
                        "attempt": int(r[4]), "age_seconds": now - float(r[5]),
                        "expires_in_seconds": float(r[6]) - now} for r in leases],
        }

    return lambda: d.read(body)


def events(ctx: Context, *, task_id: str | None, limit: int, after_id: int) -> Op[list[dict[str, Any]]]:
    """The newest audit rows (or those after ``after_id``), oldest first."""
    limit = validation.positive_int(limit, "limit")
    after = validation.non_negative_int(after_id, "after_id")
    if task_id is not None:
        task_id = validation.name(task_id, "task id")
    d = ctx.driver

    def body(now: float) -> Step[list[dict[str, Any]]]:
        rows = yield from d.events(task_id, after, limit, newest=not after)
        return [r.as_dict() for r in rows]

    return lambda: d.read(body)


def task_info(r: TaskRow) -> TaskInfo:
    return TaskInfo(
        id=r.id, queue=r.queue, status=r.status, attempts=r.attempts, max_attempts=r.max_attempts,
        owner=r.owner, fencing_token=r.fencing_token, lease_expires_at=r.lease_expires_at,
        available_at=r.available_at, payload=validation.from_json(r.payload),
        checkpoint=validation.from_json(r.checkpoint), last_error=r.last_error, dedupe_key=r.dedupe_key,
        created_at=r.created_at, updated_at=r.updated_at, priority=r.priority,
        result=validation.from_json(r.result), lock_delay=r.lock_delay, held_for=r.held_for,
    )


FINISHED = (TaskStatus.DONE.value, TaskStatus.DEAD.value)
WAIT_POLL_FIRST = 0.01
WAIT_POLL_MAX = 0.5


def wait_poll_intervals(timeout: float) -> list[float]:
    """How long to sleep between looks while waiting for a task to finish:
    quick at first, then at most ``WAIT_POLL_MAX``, never past the timeout."""
    intervals, total, step = [], 0.0, WAIT_POLL_FIRST
    while total < timeout:
        step = min(step, timeout - total)
        intervals.append(step)
        total += step
        step = min(step * 2, WAIT_POLL_MAX)
    return intervals


def finished(info: TaskInfo) -> bool:
    return info.status in FINISHED


def not_finished(info: TaskInfo, timeout: float) -> errors.WaitTimeout:
    return errors.WaitTimeout(f"task {info.id!r} is {info.status} after waiting {timeout:g} s")
