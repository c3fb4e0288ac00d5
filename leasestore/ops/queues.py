"""Queue settings: stored per queue, each falling back to the store's default,
and what enqueue, claims and releases take from them."""

from __future__ import annotations

from typing import Any

from .. import errors, validation
from ..db import audit
from ..db.driver import Step
from ..db.engine import Op
from ..db.rows import QueueSettingsRow
from ..retry import RetryPolicy
from ..types import QueueSettings
from .common import DEFAULT_MAX_ATTEMPTS, UNSET, Context

SETTING_NAMES = ("lock_delay", "lease_ttl", "max_attempts", "retry_base", "retry_cap")


def _check(name: str, value: Any) -> Any:
    """A setting's value, validated; None clears it back to the store's default."""
    if value is None:
        return None
    if name == "lock_delay":
        return validation.lock_delay(value)
    if name == "lease_ttl":
        return validation.seconds(value, "lease_ttl", validation.MIN_LEASE_TTL, validation.MAX_LEASE_TTL)
    if name == "max_attempts":
        return validation.max_attempts(value)
    return validation.seconds(value, name, 0.0, validation.MAX_DELAY)


def to_info(queue: str, row: QueueSettingsRow | None) -> QueueSettings:
    if row is None:
        return QueueSettings(queue)
    return QueueSettings(row.queue, row.lock_delay, row.lease_ttl, row.max_attempts, row.retry_base,
                         row.retry_cap, row.updated_at)


def set_queue_settings(ctx: Context, queue: str, changes: dict[str, Any]) -> Op[QueueSettings]:
    """Change some settings of ``queue`` (``UNSET`` ones are kept), audited as a
    ``settings_changed`` lock event naming what changed."""
    queue = validation.name(queue, "queue")
    checked = {name: _check(name, value) for name, value in changes.items() if value is not UNSET}
    unknown = set(checked) - set(SETTING_NAMES)
    if unknown:
        raise errors.InvalidArgument(f"unknown queue settings: {', '.join(sorted(unknown))}")
    if not checked:
        raise errors.InvalidArgument("no setting to change")
    d = ctx.driver

    def body(now: float) -> Step[QueueSettings]:
        old = yield from d.queue_settings(queue)
        merged = dict(zip(SETTING_NAMES, (None,) * len(SETTING_NAMES))) if old is None else {
            name: getattr(old, name) for name in SETTING_NAMES}
        merged.update(checked)
        base = merged["retry_base"] if merged["retry_base"] is not None else ctx.retry_policy.base
        cap = merged["retry_cap"] if merged["retry_cap"] is not None else ctx.retry_policy.cap
        RetryPolicy(base, cap, ctx.retry_policy.jitter)  # refuses a bad pair before anything is written
        row = QueueSettingsRow(queue=queue, updated_at=now, **merged)
        yield from d.store_queue_settings(row)
        yield from d.insert_lock_event(now, audit.settings_changed(queue, checked))
        ctx.queues.put(queue, row)
        return to_info(queue, row)

    return lambda: d.write(body)


def queue_settings(ctx: Context, queue: str) -> Op[QueueSettings]:
    queue = validation.name(queue, "queue")
    d = ctx.driver
    return lambda: d.read(lambda now: _one(ctx, queue))


def _one(ctx: Context, queue: str) -> Step[QueueSettings]:
    row = yield from ctx.driver.queue_settings(queue)
    return to_info(queue, row)


def all_queue_settings(ctx: Context) -> Op[list[QueueSettings]]:
    d = ctx.driver

    def body(now: float) -> Step[list[QueueSettings]]:
        rows = yield from d.all_queue_settings()
        return [to_info(r.queue, r) for r in rows]

    return lambda: d.read(body)


# --- what the operations take from them ---------------------------------------------

def enqueue_defaults(row: QueueSettingsRow | None, max_attempts: int | None,
                     lock_delay: float | None) -> tuple[int, float]:
    """(max_attempts, lock_delay) of a new task: its own, else its queue's, else the store's."""
    if max_attempts is None:
        max_attempts = row.max_attempts if row is not None and row.max_attempts is not None else DEFAULT_MAX_ATTEMPTS
    if lock_delay is None:
        lock_delay = row.lock_delay if row is not None and row.lock_delay is not None else 0.0
    return max_attempts, lock_delay


def lease_ttl(ctx: Context, queue: str) -> Step[float]:
    """The TTL of a claim that names none."""
    row = yield from ctx.queues.get(ctx.driver, queue)
    return row.lease_ttl if row is not None and row.lease_ttl is not None else ctx.default_ttl


def retry_policy(ctx: Context, queue: str) -> Step[RetryPolicy]:
    """The backoff after a failed attempt of a task of ``queue``."""
    row = yield from ctx.queues.get(ctx.driver, queue)
    if row is None or (row.retry_base is None and row.retry_cap is None):
        return ctx.retry_policy
    policy = ctx.retry_policy
    return RetryPolicy(row.retry_base if row.retry_base is not None else policy.base,
                       row.retry_cap if row.retry_cap is not None else policy.cap, policy.jitter)
