"""Fenced writes by a lease's holder: heartbeat, checkpoint, release, and why
a refused write was refused."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

from .. import errors, validation
from ..db import audit
from ..db.driver import Driver, ExtendParams, ReleaseParams, Step
from ..db.engine import Op
from ..failpoints import failpoint
from ..states import EventKind, LockOp, ReleaseOutcome, TaskStatus
from ..types import HeartbeatResult, Lease, LeaseLike, ReleaseResult, ReleaseResultKind
from ..retry import RetryPolicy
from . import queues
from .common import UNSET, Context, hash_token, lease_fields

log_heartbeat = logging.getLogger("leasestore.heartbeat")
log_release = logging.getLogger("leasestore.release")



class RefusedInCallerTransaction(Exception):
    """A holder write refused inside the caller's own transaction (``connection=``).
    Its conflict row must not share that transaction's fate (the caller rolls
    back): the store records it with :func:`record_refusal` on its own connection."""

    def __init__(self, record: Callable[[float], Step[errors.LeaseLost]]) -> None:
        super().__init__("refused inside the caller's transaction")
        self.record = record


def record_refusal(ctx: Context, refused: RefusedInCallerTransaction) -> Op[NoReturn]:
    """Record the refusal in a transaction of the store's own; raises its LeaseLost."""
    return lambda: ctx.driver.refused(refused.record)


def _refused(d: Driver, record: Callable[[float], Step[errors.LeaseLost]], in_caller_tx: bool) -> Step[NoReturn]:
    if in_caller_tx:
        raise RefusedInCallerTransaction(record)
    yield from d.refused(record)
    raise AssertionError("unreachable: refused() raises")


def heartbeat(ctx: Context, lease: LeaseLike, *, ttl: float | None, checkpoint: Any,
              in_caller_tx: bool = False) -> Op[HeartbeatResult]:
    """See :meth:`leasestore.LeaseStore.heartbeat`."""
    task_id, token, fence = lease_fields(lease)
    ttl = validation.ttl(ttl if ttl is not None else getattr(lease, "ttl", ctx.default_ttl))
    checkpointing = checkpoint is not UNSET
    params = ExtendParams(task_id, hash_token(token), fence, ttl,
                          validation.to_json(checkpoint, "checkpoint") if checkpointing else None, checkpointing)
    d = ctx.driver

    def step() -> Step[HeartbeatResult]:
        failpoint("before_heartbeat_update")
        row = yield from d.extend(params)
        if row is not None:
            return HeartbeatResult(task_id, row.fencing_token, row.expires_at)
        # Refused: nothing was written; work out why and record the conflict.
        return (yield from _refused(d, lambda now: refuse(d, now, task_id, params.token_hash, fence,
                                                          LockOp.HEARTBEAT, log_heartbeat), in_caller_tx))

    return step


# Enum members of the release path, read once (see leasestore.states).
_DONE, _FAILED, _DONE_RESULT, _RETRY_RESULT = (ReleaseOutcome.DONE, ReleaseOutcome.FAILED, ReleaseResultKind.DONE,
                                               ReleaseResultKind.RETRY_SCHEDULED)
_RELEASED, _DONE_STATUS = EventKind.RELEASED, TaskStatus.DONE

# A member hashes as its value: one lookup takes either (an Enum call costs several frames).
_OUTCOMES: dict[object, ReleaseOutcome] = {o.value: o for o in ReleaseOutcome}


def release_task(ctx: Context, lease: LeaseLike, outcome: ReleaseOutcome | str, error: Any, *,
                 retry_in: float | None, result: Any = None, in_caller_tx: bool = False) -> Op[ReleaseResult]:
    """See :meth:`leasestore.LeaseStore.release_task`."""
    task_id, token, fence = lease_fields(lease)
    try:
        outcome = _OUTCOMES[outcome]
    except (KeyError, TypeError):
        raise errors.InvalidArgument("outcome must be 'done' or 'failed'") from None
    if result is not None and outcome is not _DONE:
        raise errors.InvalidArgument("only a done release carries a result")
    result_json = validation.to_json(result, "result")
    error_text = validation.error_text(error)
    if retry_in is not None:
        retry_in = validation.delay(retry_in)
    token_hash = hash_token(token)
    # A lease's attempt number cannot change while its fencing token stands,
    # so a full Lease needs no read; a bare reference reads it first.
    known = (lease.attempt, lease.max_attempts, lease.queue) if isinstance(lease, Lease) else None
    d = ctx.driver

    def step() -> Step[ReleaseResult]:
        attempts = known
        if attempts is None:
            attempts = yield from d.attempts(task_id)
            if attempts is None:
                raise errors.TaskNotFound(task_id)
        attempt, max_attempts, queue = attempts
        policy = ctx.retry_policy
        if outcome is _FAILED and retry_in is None and attempt < max_attempts:
            policy = yield from queues.retry_policy(ctx, queue)
        kind, params = decide_release(policy, task_id, token_hash, fence, attempt, max_attempts, outcome,
                                      error_text, retry_in)
        if result_json is not None:
            params = params._replace(result=result_json)
        failpoint("before_release_update")
        row = yield from d.release(params)
        if row is None:
            return (yield from _refused(d, lambda now: refuse(d, now, task_id, token_hash, fence,
                                                              LockOp.RELEASE, log_release), in_caller_tx))
        return ReleaseResult(task_id, kind, attempt,
                             row.available_at if kind is _RETRY_RESULT else None, row.dead_letter_id)

    return step


def decide_release(policy: RetryPolicy, task_id: str, token_hash: str, fence: int, attempt: int, max_attempts: int,
                   outcome: ReleaseOutcome, error_text: str | None,
                   retry_in: float | None) -> tuple[ReleaseResultKind, ReleaseParams]:
    """Done; or failed below the retry limit → pending after a backoff; or at the
    limit → a dead letter."""
    if outcome is _DONE:
        result, kind, to_status, delay, reason, dead = _DONE_RESULT, _RELEASED, _DONE_STATUS, 0.0, None, None
    elif attempt < max_attempts:
        delay = retry_in if retry_in is not None else policy.delay(attempt)
        result, kind, to_status, reason, dead = (_RETRY_RESULT, EventKind.RETRY_SCHEDULED, TaskStatus.PENDING,
                                                 "failed", None)
    else:
        result, kind, to_status, delay, reason, dead = (ReleaseResultKind.DEAD_LETTERED, EventKind.DEAD_LETTERED,
                                                        TaskStatus.DEAD, 0.0, "retry_limit", "retry_limit")
    return result, ReleaseParams(task_id, token_hash, fence, attempt, to_status, delay, error_text, kind, reason,
                                 audit.release_lock_detail(result), dead)


def refuse(d: Driver, now: float, task_id: str, token_hash: str, fence: int, op: LockOp,
           log: logging.Logger) -> Step[errors.LeaseLost]:
    """Work out why a holder's write matched nothing and record the conflict.

    Returns the error, so the transaction commits the conflict row before the
    caller raises it."""
    state = yield from d.lease_state(task_id)
    if state is None:
        raise errors.TaskNotFound(task_id)
    current = state.fencing_token
    error: errors.LeaseLost
    if state.status == TaskStatus.LEASED and current == fence and state.token_hash == token_hash:
        error = errors.LeaseLost(task_id, "expired", fence, current)
    elif state.status == TaskStatus.LEASED and current == fence:
        error = errors.StaleLeaseToken(task_id, "invalid_token", fence, current)
    else:
        end = (yield from d.lease_end_event(task_id, fence)) if fence <= current else None
        reason = "invalid_token" if end is None else audit.end_reason(*end)
        error = errors.StaleLeaseToken(task_id, reason, fence, current)
    yield from d.insert_lock_event(now, audit.conflict(task_id, state.queue, state.owner, op, fence,
                                                       error.reason, current))
    log.info("%s refused: %s", op.value, error)
    return error
