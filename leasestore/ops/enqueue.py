"""Adding tasks: validation, the dedupe race, the ``enqueued`` audit row."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from .. import errors, validation
from ..db.driver import Event, Step
from ..db.engine import Op
from ..states import EventKind, TaskStatus
from ..types import EnqueueResult
from . import queues
from .common import Context


def enqueue_many(ctx: Context, queue: str, payloads: Sequence[Any], *, task_ids: Sequence[str] | None,
                 max_attempts: int | None, dedupe_keys: Sequence[str | None] | None,
                 delay: float, priority: int = 0, lock_delay: float | None = None) -> Op[list[EnqueueResult]]:
    """Add many tasks in one transaction (all or none). ``max_attempts`` and
    ``lock_delay`` left None come from the queue's settings, read in the same
    transaction."""
    queue = validation.name(queue, "queue")
    priority = validation.priority(priority)
    asked_attempts = None if max_attempts is None else validation.max_attempts(max_attempts)
    asked_delay = None if lock_delay is None else validation.lock_delay(lock_delay)
    delay = validation.delay(delay)
    count = len(payloads)
    if task_ids is not None and len(task_ids) != count:
        raise errors.InvalidArgument("task_ids must have one id per payload")
    if dedupe_keys is not None and len(dedupe_keys) != count:
        raise errors.InvalidArgument("dedupe_keys must have one key per payload")
    rows = []
    for i, payload in enumerate(payloads):
        tid = validation.name(task_ids[i], "task id") if task_ids else uuid.uuid4().hex
        key = validation.optional_name(dedupe_keys[i], "dedupe key") if dedupe_keys else None
        rows.append((tid, validation.to_json(payload, "payload"), key))
    if len({r[0] for r in rows}) != len(rows):
        raise errors.InvalidArgument("task ids must be unique")
    d = ctx.driver

    def body(now: float) -> Step[list[EnqueueResult]]:
        settings = None
        if asked_attempts is None or asked_delay is None:
            settings = yield from d.queue_settings(queue)
        attempts, held = queues.enqueue_defaults(settings, asked_attempts, asked_delay)
        results = []
        for tid, payload_json, key in rows:
            existing = yield from _existing(ctx, queue, tid, key)
            if existing is not None:
                results.append(EnqueueResult(existing, created=False))
                continue
            yield from d.insert_task(now, tid, queue, payload_json, attempts, delay, key, priority, held)
            yield from d.insert_event(now, Event(tid, queue, EventKind.ENQUEUED, None, TaskStatus.PENDING,
                                                 attempt=0,
                                                 detail=_enqueue_detail(key, priority, held, now + delay if delay else None)))
            results.append(EnqueueResult(tid, created=True))
        return results

    def step() -> Step[list[EnqueueResult]]:
        try:
            return (yield from d.write(body))
        except errors.DuplicateKey:
            # A concurrent enqueue won the race on the same id or key: its row
            # is committed now, so a second pass reads it.
            yield from d.rollback()
        return (yield from d.write(body))

    return step


def _existing(ctx: Context, queue: str, task_id: str, key: str | None) -> Step[str | None]:
    d = ctx.driver
    if key is not None:
        by_key = yield from d.task_by_dedupe_key(queue, key)
        if by_key is not None:
            return by_key.id
    row = yield from d.task(task_id)
    if row is None:
        return None
    if row.queue != queue:
        raise errors.InvalidArgument(f"task id {task_id!r} already exists in queue {row.queue!r}")
    if key is not None and row.dedupe_key != key:
        raise errors.InvalidArgument(f"task id {task_id!r} already exists with another dedupe key")
    return task_id


def _enqueue_detail(dedupe_key: str | None, priority: int, lock_delay: float,
                    available_at: float | None) -> dict[str, Any] | None:
    detail: dict[str, Any] = {}
    if available_at is not None:  # when a delayed task may first be claimed (the history check's priority order)
        detail["available_at"] = available_at
    if lock_delay:
        detail["lock_delay"] = lock_delay
    if dedupe_key:
        detail["dedupe_key"] = dedupe_key
    if priority:
        detail["priority"] = priority
    return detail or None
