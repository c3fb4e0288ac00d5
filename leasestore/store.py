"""The lease store: enqueue, claim, heartbeat, release, recover.

Every operation is one short write transaction that changes the task row and
appends its audit rows (``event_log`` for state changes, ``lock_events`` for
lock outcomes) together, so the log can never disagree with the tasks.
Writes by a holder name the lease's token hash and fencing token in the same
UPDATE that changes the row: a holder whose lease ended changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from pathlib import Path
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from . import errors, validation
from .db import queries as q
from .db.dialect import Clock, Dialect
from .db.engine import DEFAULT_BUSY_TIMEOUT, Database, open_database
from .db.schema import init_db, schema_version
from .failpoints import FailpointError, failpoint
from .models import (
    SCHEMA_VERSION,
    DeadLetterStatus,
    EventKind,
    LockOp,
    LockOutcome,
    ReleaseOutcome,
    TaskStatus,
)
from .retry import RetryPolicy
from .settings import resolve_database_url
from .types import (
    ClaimResult,
    ClaimStatus,
    DeadLetterInfo,
    HeartbeatResult,
    Lease,
    RecoveryReport,
    ReleaseResult,
    ReleaseResultKind,
    TaskInfo,
)

DEFAULT_LEASE_TTL = 30.0
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RECOVER_BATCH = 100
# A connection dropped mid-operation is retried this many times; every
# operation is safe to repeat (a repeated claim resumes, see claim_task).
DISCONNECT_RETRIES = 2

T = TypeVar("T")

log_claim = logging.getLogger("leasestore.claim")
log_heartbeat = logging.getLogger("leasestore.heartbeat")
log_release = logging.getLogger("leasestore.release")
log_recover = logging.getLogger("leasestore.recover")

_END_REASONS = {
    EventKind.TAKEN_OVER: "taken_over",
    EventKind.RELEASED: "released",
    EventKind.RETRY_SCHEDULED: "released",
    EventKind.RECOVERED: "recovered",
    EventKind.REVOKED: "revoked",
}


class LeaseLike(Protocol):
    """Anything naming a lease: a :class:`Lease` or a :class:`LeaseRef`."""

    task_id: str
    token: str
    fencing_token: int


@dataclass(frozen=True)
class LeaseRef:
    """A lease known only by id, token and fencing token (e.g. from the CLI)."""

    task_id: str
    token: str
    fencing_token: int


@dataclass(frozen=True)
class EnqueueResult:
    task_id: str
    created: bool


def hash_token(token: str) -> str:
    """Only this hash is stored; the token itself never reaches the database."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LeaseStore:
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
    clock_offset:
        Seconds added to the database clock (tests move time with it).
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
    ) -> None:
        self.url = resolve_database_url(url)
        self.clock = Clock(float(clock_offset))
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_ttl = validation.ttl(default_ttl)
        if not init and self.url.get_backend_name() == "sqlite" and not Path(self.url.database or "").exists():
            # Reading a store that is not there must not leave an empty file behind.
            raise errors.SchemaNotInitialized(
                f"no database at {self.url.database}: run `leasestore init-db`")
        self._db: Database = open_database(
            self.url, clock=self.clock, busy_timeout=busy_timeout, fair_writes=fair_writes
        )
        self._d: Dialect = self._db.dialect
        if init:
            self.init_db(only_if_missing=True)

    # --- plumbing -----------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._d.name

    @property
    def database(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.dispose()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LeaseStore({self.url.render_as_string(hide_password=True)!r})"

    def init_db(self, *, only_if_missing: bool = False) -> int:
        """Create or upgrade the schema; idempotent. Returns the schema version."""
        if only_if_missing and schema_version(self._db) == SCHEMA_VERSION:
            return SCHEMA_VERSION
        return init_db(self._db)

    def _write(self, body: Callable[[Any, float], T], *, retries: int = DISCONNECT_RETRIES) -> T:
        """Run ``body(cursor, now)`` in one write transaction."""
        return self._transaction(self._d.write_transaction, body, retries)

    def _read(self, body: Callable[[Any, float], T], *, retries: int = DISCONNECT_RETRIES) -> T:
        """Run ``body(cursor, now)`` in one read transaction (repeatable, so retried like writes)."""
        return self._transaction(self._d.read_transaction, body, retries)

    def _transaction(self, begin: Callable[[Any], AbstractContextManager[Any]],
                     body: Callable[[Any, float], T], retries: int) -> T:
        def transaction() -> T:
            with self._db.connection() as conn, begin(conn) as cur:
                return body(cur, self._d.now(cur))

        return self._retrying(transaction, retries)

    def _statement(self, body: Callable[[Any], T], *, retries: int = DISCONNECT_RETRIES) -> T:
        """Run ``body(cursor)``: one self-contained (autocommitted) statement."""
        def run() -> T:
            with self._db.connection() as conn:
                return body(conn.cursor())

        return self._retrying(run, retries)

    @staticmethod
    def _retrying(run: Callable[[], T], retries: int) -> T:
        # Only a lost connection is retried; busy, read-only and full are the
        # caller's to handle (they are typed subclasses).
        attempt = 0
        while True:
            try:
                return run()
            except errors.StoreUnavailable as exc:
                if attempt >= retries or type(exc) is not errors.StoreUnavailable:
                    raise
                attempt += 1

    def now(self) -> float:
        """The database clock (epoch seconds) as the store sees it."""
        return self._read(lambda cur, now: now)

    def _event(self, cur: Any, now: float, task_id: str, queue: str, kind: EventKind, *,
               from_status: str | None, to_status: str | None, owner: str | None = None,
               fence: int | None = None, attempt: int | None = None, reason: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        self._d.execute(cur, q.INSERT_EVENT, {
            "now": now, "id": task_id, "queue": queue, "kind": kind.value,
            "from_status": from_status, "to_status": to_status, "owner": owner,
            "fence": fence, "attempt": attempt, "reason": reason,
            "detail": json.dumps(detail, separators=(",", ":")) if detail else None,
        })

    def _lock_event(self, cur: Any, now: float, task_id: str | None, queue: str | None,
                    owner: str | None, op: LockOp, outcome: LockOutcome, fence: int | None,
                    detail: dict[str, Any] | None = None) -> None:
        self._d.execute(cur, q.INSERT_LOCK_EVENT, {
            "now": now, "id": task_id, "queue": queue, "owner": owner, "op": op.value,
            "outcome": outcome.value, "fence": fence,
            "detail": json.dumps(detail, separators=(",", ":")) if detail else None,
        })

    # --- enqueue ------------------------------------------------------------
    def enqueue(
        self,
        queue: str,
        payload: Any = None,
        *,
        task_id: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        dedupe_key: str | None = None,
        delay: float = 0.0,
    ) -> EnqueueResult:
        """Add a task. A repeated ``dedupe_key`` (or ``task_id``) in the same queue
        returns the existing task with ``created=False`` instead of a second one."""
        return self.enqueue_many(
            queue, [payload], task_ids=[task_id] if task_id is not None else None,
            max_attempts=max_attempts, dedupe_keys=[dedupe_key] if dedupe_key is not None else None,
            delay=delay,
        )[0]

    def enqueue_many(
        self,
        queue: str,
        payloads: Sequence[Any],
        *,
        task_ids: Sequence[str] | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        dedupe_keys: Sequence[str | None] | None = None,
        delay: float = 0.0,
    ) -> list[EnqueueResult]:
        """Add many tasks in one transaction (all or none)."""
        queue = validation.name(queue, "queue")
        max_attempts = validation.max_attempts(max_attempts)
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

        def body(cur: Any, now: float) -> list[EnqueueResult]:
            results = []
            for tid, payload_json, key in rows:
                existing = self._find_existing(cur, queue, tid, key)
                if existing is not None:
                    results.append(EnqueueResult(existing, created=False))
                    continue
                self._d.execute(cur, q.INSERT_TASK, {
                    "id": tid, "queue": queue, "payload": payload_json,
                    "max_attempts": max_attempts, "now": now, "delay": delay, "dedupe_key": key,
                })
                self._event(cur, now, tid, queue, EventKind.ENQUEUED, from_status=None,
                            to_status=TaskStatus.PENDING, attempt=0,
                            detail={"dedupe_key": key} if key else None)
                results.append(EnqueueResult(tid, created=True))
            return results

        try:
            return self._write(body)
        except errors.LeaseStoreError:
            raise
        except Exception as exc:
            if _is_integrity_error(exc):
                # A concurrent enqueue won the race on the same id or key: read its row.
                return self._write(body)
            raise

    def _find_existing(self, cur: Any, queue: str, task_id: str, key: str | None) -> str | None:
        if key is not None:
            row = self._d.fetchone(cur, q.SELECT_BY_DEDUPE, {"queue": queue, "dedupe_key": key})
            if row is not None:
                return str(row[0])
        row = self._d.fetchone(cur, q.SELECT_TASK, {"id": task_id})
        if row is None:
            return None
        if row[1] != queue:
            raise errors.InvalidArgument(f"task id {task_id!r} already exists in queue {row[1]!r}")
        if key is not None and row[12] != key:
            raise errors.InvalidArgument(f"task id {task_id!r} already exists with another dedupe key")
        return task_id

    # --- claim --------------------------------------------------------------
    def claim_task(
        self,
        queue: str | None = None,
        owner: str = "",
        *,
        task_id: str | None = None,
        ttl: float | None = None,
        additional: bool = False,
    ) -> ClaimResult:
        """Lease the next available task of ``queue`` (or the task ``task_id``).

        Results: ``acquired`` (new lease; ``lease.took_over`` when an expired
        lease was taken over), ``resumed`` (the owner already held it:
        duplicateSuppressed, same fencing token, fresh secret token), ``busy``
        (another owner holds an unexpired lease; recorded as a lock conflict) or
        ``noTask``. Unless ``additional`` is true, an owner that already holds an
        unexpired lease in the queue gets that lease back first.
        """
        owner = validation.name(owner, "owner")
        ttl = validation.ttl(self.default_ttl if ttl is None else ttl)
        if task_id is None and queue is None:
            raise errors.InvalidArgument("claim_task needs a queue or a task_id")
        queue = validation.optional_name(queue, "queue")
        task_id = validation.optional_name(task_id, "task id")
        token = secrets.token_urlsafe(32)
        base = {"owner": owner, "token_hash": hash_token(token), "ttl": ttl}

        def body(cur: Any, now: float) -> ClaimResult:
            params = dict(base, now=now)
            if task_id is not None:
                return self._claim_named(cur, now, params, token, task_id, queue)
            assert queue is not None
            if not additional:
                own = self._d.fetchone(cur, q.SELECT_OWN_LEASE, {"owner": owner, "queue": queue, "now": now})
                if own is not None:
                    return self._resume(cur, now, params, token, str(own[0]))
            row = self._d.select_next_pending(cur, queue, now)
            if row is not None:
                return self._acquire(cur, now, params, token, str(row[0]), int(row[1]),
                                     TaskStatus.PENDING, previous=None)
            row = self._d.select_expired_candidate(cur, queue, now)
            if row is not None:
                return self._acquire(cur, now, params, token, str(row[0]), int(row[2]),
                                     TaskStatus.LEASED, previous=(row[1], int(row[2]), float(row[3])))
            return ClaimResult(ClaimStatus.NO_TASK)

        result = None
        if task_id is None and self._d.supports_fused:
            result = self._claim_next_fused(dict(base, queue=queue, resume=not additional), token)
        if result is None:
            result = self._write(body)
        log_claim.debug("claim %s/%s by %s: %s", queue, task_id, owner, result.status)
        return result

    def _claim_next_fused(self, params: dict[str, Any], token: str) -> ClaimResult | None:
        """The common case in one round trip; None sends the caller down the full path
        (the owner holds a lease to resume, or only expired leases are left)."""
        found = self._statement(lambda cur: self._d.claim_next_fused(cur, params))
        if found is None or found[0] != "claimed":
            return None
        lease = self._lease(found[1], token, params["ttl"], took_over=False)
        return ClaimResult(ClaimStatus.ACQUIRED, lease=lease, task_id=lease.task_id)

    def _claim_named(self, cur: Any, now: float, params: dict[str, Any], token: str,
                     task_id: str, queue: str | None) -> ClaimResult:
        row = self._d.select_task_for_update(cur, task_id)
        if row is None or (queue is not None and row[1] != queue):
            raise errors.TaskNotFound(task_id)
        status, attempts, max_attempts, holder, fence, expires, available_at = (
            row[2], int(row[3]), int(row[4]), row[5], int(row[6]), row[7], float(row[8]))
        if status == TaskStatus.PENDING:
            if available_at > now:
                return ClaimResult(ClaimStatus.NO_TASK, task_id=task_id)
            return self._acquire(cur, now, params, token, task_id, fence, TaskStatus.PENDING, previous=None)
        if status != TaskStatus.LEASED:
            return ClaimResult(ClaimStatus.NO_TASK, task_id=task_id)
        if expires > now:
            if holder == params["owner"]:
                return self._resume(cur, now, params, token, task_id)
            self._lock_event(cur, now, task_id, row[1], params["owner"], LockOp.CLAIM,
                             LockOutcome.BUSY, fence)
            return ClaimResult(ClaimStatus.BUSY, task_id=task_id, holder=holder)
        if attempts >= max_attempts:
            self._expire_to_dead_letter(cur, now, task_id, row[1], holder, fence, attempts,
                                        op=LockOp.CLAIM)
            return ClaimResult(ClaimStatus.NO_TASK, task_id=task_id)
        return self._acquire(cur, now, params, token, task_id, fence, TaskStatus.LEASED,
                             previous=(holder, fence, float(expires)))

    def _acquire(self, cur: Any, now: float, params: dict[str, Any], token: str, task_id: str,
                 fence: int, from_status: TaskStatus,
                 previous: tuple[str | None, int, float] | None) -> ClaimResult:
        row = self._d.fetchone(cur, q.ACQUIRE, dict(params, id=task_id, fence=fence,
                                                      from_status=from_status.value))
        if row is None:  # pragma: no cover - the row is locked by this transaction
            raise errors.InvalidTransition(f"task {task_id!r} changed during claim")
        failpoint("after_claim_update")
        lease = self._lease(row, token, params["ttl"], took_over=previous is not None)
        if previous is None:
            self._event(cur, now, task_id, lease.queue, EventKind.CLAIMED,
                        from_status=from_status, to_status=TaskStatus.LEASED, owner=lease.owner,
                        fence=lease.fencing_token, attempt=lease.attempt)
            outcome = LockOutcome.ACQUIRED
        else:
            prev_owner, prev_fence, prev_expires = previous
            self._event(cur, now, task_id, lease.queue, EventKind.TAKEN_OVER,
                        from_status=TaskStatus.LEASED, to_status=TaskStatus.LEASED,
                        owner=lease.owner, fence=lease.fencing_token, attempt=lease.attempt,
                        reason="lease_expired",
                        detail={"previous_owner": prev_owner, "previous_fencing_token": prev_fence,
                                "previous_expires_at": prev_expires})
            outcome = LockOutcome.TAKEN_OVER
        self._lock_event(cur, now, task_id, lease.queue, lease.owner, LockOp.CLAIM, outcome,
                         lease.fencing_token)
        return ClaimResult(ClaimStatus.ACQUIRED, lease=lease, task_id=task_id)

    def _resume(self, cur: Any, now: float, params: dict[str, Any], token: str,
                task_id: str) -> ClaimResult:
        row = self._d.fetchone(cur, q.RESUME, dict(params, id=task_id))
        if row is None:  # pragma: no cover - checked under the same lock
            raise errors.InvalidTransition(f"task {task_id!r} changed during claim")
        lease = self._lease(row, token, params["ttl"], took_over=False)
        self._lock_event(cur, now, task_id, lease.queue, lease.owner, LockOp.CLAIM,
                         LockOutcome.DUPLICATE, lease.fencing_token)
        return ClaimResult(ClaimStatus.RESUMED, lease=lease, task_id=task_id)

    @staticmethod
    def _lease(row: Sequence[Any], token: str, ttl: float, *, took_over: bool) -> Lease:
        return Lease(
            task_id=str(row[0]), queue=str(row[1]), owner=str(row[2]), token=token,
            fencing_token=int(row[3]), expires_at=float(row[4]), ttl=ttl, attempt=int(row[5]),
            max_attempts=int(row[6]), payload=validation.from_json(row[7]),
            checkpoint=validation.from_json(row[8]), took_over=took_over,
        )

    # --- heartbeat ------------------------------------------------------------
    _UNSET: Any = object()

    def heartbeat(self, lease: LeaseLike, *, ttl: float | None = None,
                  checkpoint: Any = _UNSET) -> HeartbeatResult:
        """Extend a lease (and optionally store a checkpoint for the next attempt).

        Raises :class:`LeaseLost` (or its subclass :class:`StaleLeaseToken`)
        with the reason when the lease is no longer held by this token; the
        refusal is recorded as a lock conflict and nothing else changes.
        """
        task_id, token, fence = _lease_fields(lease)
        ttl = validation.ttl(ttl if ttl is not None else getattr(lease, "ttl", self.default_ttl))
        params: dict[str, Any] = {"id": task_id, "token_hash": hash_token(token), "fence": fence, "ttl": ttl}
        statement = q.HEARTBEAT
        if checkpoint is not self._UNSET:
            params["checkpoint"] = validation.to_json(checkpoint, "checkpoint")
            statement = q.HEARTBEAT_CHECKPOINT

        def body(cur: Any, now: float) -> HeartbeatResult | errors.LeaseLost:
            failpoint("before_heartbeat_update")
            row = self._d.fetchone(cur, statement, dict(params, now=now))
            if row is None:
                return self._refuse(cur, now, task_id, params["token_hash"], fence, LockOp.HEARTBEAT)
            queue, owner, new_fence, expires = row
            self._lock_event(cur, now, task_id, queue, owner, LockOp.HEARTBEAT,
                             LockOutcome.EXTENDED, int(new_fence))
            if checkpoint is not self._UNSET:
                self._event(cur, now, task_id, queue, EventKind.CHECKPOINTED,
                            from_status=TaskStatus.LEASED, to_status=TaskStatus.LEASED,
                            owner=owner, fence=int(new_fence))
            return HeartbeatResult(task_id, int(new_fence), float(expires))

        result: HeartbeatResult | errors.LeaseLost | None = None
        if self._d.supports_fused:
            row = self._statement(lambda cur: self._d.heartbeat_fused(cur, {
                **params, "checkpointing": "checkpoint" in params, "checkpoint": params.get("checkpoint")}))
            if row is not None:
                result = HeartbeatResult(task_id, int(row[0]), float(row[1]))
        if result is None:  # refused, or no one-statement path: the full path records why
            result = self._write(body)
        if isinstance(result, errors.LeaseLost):
            log_heartbeat.info("heartbeat refused: %s", result)
            raise result
        return result

    def _refuse(self, cur: Any, now: float, task_id: str, token_hash: str, fence: int,
                op: LockOp) -> errors.LeaseLost:
        """Work out why a holder's write matched nothing, and record the conflict.

        Returns the error so the transaction commits the conflict row first.
        """
        row = self._d.fetchone(
            cur, "SELECT queue, status, fencing_token, lease_token_hash, lease_expires_at, owner "
                 "FROM tasks WHERE id = :id", {"id": task_id})
        if row is None:
            raise errors.TaskNotFound(task_id)
        queue, status, current, current_hash, expires, holder = row
        current = int(current)
        error: errors.LeaseLost
        if status == TaskStatus.LEASED and current == fence and current_hash == token_hash:
            error = errors.LeaseLost(task_id, "expired", fence, current)
        elif status == TaskStatus.LEASED and current == fence:
            error = errors.StaleLeaseToken(task_id, "invalid_token", fence, current)
        else:
            end = self._d.fetchone(cur, q.LEASE_END_EVENT, {"id": task_id, "fence": fence}) if fence <= current else None
            if end is None:
                reason = "invalid_token"
            elif end[0] == EventKind.DEAD_LETTERED:
                reason = "recovered" if end[1] == "lease_expired" else "released"
            else:
                reason = _END_REASONS.get(EventKind(end[0]), str(end[0]))
            error = errors.StaleLeaseToken(task_id, reason, fence, current)
        self._lock_event(cur, now, task_id, queue, holder, op, LockOutcome.CONFLICT, fence,
                         detail={"reason": error.reason, "current_fencing_token": current})
        return error

    # --- release ------------------------------------------------------------
    def release_task(self, lease: LeaseLike, outcome: ReleaseOutcome | str = ReleaseOutcome.DONE,
                     error: Any = None, *, retry_in: float | None = None) -> ReleaseResult:
        """End a lease: ``done``, or ``failed`` with ``error`` text.

        A failed task below its retry limit returns to pending after the retry
        policy's backoff (or ``retry_in`` seconds); at the limit it becomes a
        dead letter. A stale token raises :class:`LeaseLost` and changes nothing.
        """
        task_id, token, fence = _lease_fields(lease)
        try:
            outcome = ReleaseOutcome(outcome)
        except ValueError:
            raise errors.InvalidArgument("outcome must be 'done' or 'failed'") from None
        error_text = validation.error_text(error)
        if retry_in is not None:
            retry_in = validation.delay(retry_in)
        token_hash = hash_token(token)

        def body(cur: Any, now: float) -> ReleaseResult | errors.LeaseLost:
            attempts, max_attempts = self._attempts(cur, task_id, lease)
            if outcome is ReleaseOutcome.DONE:
                kind, to_status, available_at = ReleaseResultKind.DONE, TaskStatus.DONE, now
            elif attempts < max_attempts:
                delay = retry_in if retry_in is not None else self.retry_policy.delay(attempts)
                kind, to_status, available_at = ReleaseResultKind.RETRY_SCHEDULED, TaskStatus.PENDING, now + delay
            else:
                kind, to_status, available_at = ReleaseResultKind.DEAD_LETTERED, TaskStatus.DEAD, now
            failpoint("before_release_update")
            row = self._d.fetchone(cur, q.RELEASE, {
                "id": task_id, "token_hash": token_hash, "fence": fence, "now": now,
                "to_status": to_status.value, "available_at": available_at, "error": error_text,
            })
            if row is None:
                return self._refuse(cur, now, task_id, token_hash, fence, LockOp.RELEASE)
            queue, owner = row[0], row[1]
            dead_letter_id = None
            if kind is ReleaseResultKind.DONE:
                self._event(cur, now, task_id, queue, EventKind.RELEASED, from_status=TaskStatus.LEASED,
                            to_status=TaskStatus.DONE, owner=owner, fence=fence, attempt=attempts)
            elif kind is ReleaseResultKind.RETRY_SCHEDULED:
                self._event(cur, now, task_id, queue, EventKind.RETRY_SCHEDULED,
                            from_status=TaskStatus.LEASED, to_status=TaskStatus.PENDING, owner=owner,
                            fence=fence, attempt=attempts, reason="failed",
                            detail={"retry_at": available_at})
            else:
                dead_letter_id = self._insert_dead_letter(cur, now, task_id, queue, "retry_limit",
                                                          attempts, error_text)
                self._event(cur, now, task_id, queue, EventKind.DEAD_LETTERED,
                            from_status=TaskStatus.LEASED, to_status=TaskStatus.DEAD, owner=owner,
                            fence=fence, attempt=attempts, reason="retry_limit",
                            detail={"dead_letter_id": dead_letter_id})
            self._lock_event(cur, now, task_id, queue, owner, LockOp.RELEASE, LockOutcome.RELEASED,
                             fence, detail={"outcome": kind.value})
            return ReleaseResult(task_id, kind, attempts,
                                 next_attempt_at=available_at if kind is ReleaseResultKind.RETRY_SCHEDULED else None,
                                 dead_letter_id=dead_letter_id)

        result: ReleaseResult | errors.LeaseLost | None = None
        if self._d.supports_fused and isinstance(lease, Lease):
            result = self._release_fused(lease, outcome, error_text, retry_in, token_hash)
        if result is None:
            result = self._write(body)
        if isinstance(result, errors.LeaseLost):
            log_release.info("release refused: %s", result)
            raise result
        return result

    def _release_fused(self, lease: Lease, outcome: ReleaseOutcome, error_text: str | None,
                       retry_in: float | None, token_hash: str) -> ReleaseResult | None:
        """Done or retry in one round trip; None when the full path must decide
        (dead letter, or a refusal whose reason it works out)."""
        if outcome is ReleaseOutcome.DONE:
            kind, to_status, delay, reason = ReleaseResultKind.DONE, TaskStatus.DONE, 0.0, None
        elif lease.attempt < lease.max_attempts:
            delay = retry_in if retry_in is not None else self.retry_policy.delay(lease.attempt)
            kind, to_status, reason = ReleaseResultKind.RETRY_SCHEDULED, TaskStatus.PENDING, "failed"
        else:
            return None
        row = self._statement(lambda cur: self._d.release_fused(cur, {
            "id": lease.task_id, "token_hash": token_hash, "fence": lease.fencing_token,
            "to_status": to_status.value, "delay": delay, "error": error_text,
            "kind": (EventKind.RELEASED if kind is ReleaseResultKind.DONE else EventKind.RETRY_SCHEDULED).value,
            "attempt": lease.attempt, "reason": reason}))
        if row is None:
            return None
        next_at = float(row[2]) if kind is ReleaseResultKind.RETRY_SCHEDULED else None
        return ReleaseResult(lease.task_id, kind, lease.attempt, next_attempt_at=next_at)

    def _attempts(self, cur: Any, task_id: str, lease: LeaseLike) -> tuple[int, int]:
        # A lease's attempt number cannot change while its fencing token stands,
        # so a full Lease needs no read; a bare reference reads the row.
        if isinstance(lease, Lease):
            return lease.attempt, lease.max_attempts
        row = self._d.fetchone(cur, "SELECT attempts, max_attempts FROM tasks WHERE id = :id", {"id": task_id})
        if row is None:
            raise errors.TaskNotFound(task_id)
        return int(row[0]), int(row[1])

    def _insert_dead_letter(self, cur: Any, now: float, task_id: str, queue: str, reason: str,
                            attempts: int, error_text: str | None) -> int:
        row = self._d.fetchone(cur, q.INSERT_DEAD_LETTER, {
            "id": task_id, "queue": queue, "reason": reason, "attempts": attempts,
            "error": error_text, "now": now})
        assert row is not None
        return int(row[0])

    def _expire_to_dead_letter(self, cur: Any, now: float, task_id: str, queue: str,
                               holder: str | None, fence: int, attempts: int, *, op: LockOp) -> bool:
        """Dead-letter an expired lease at its retry limit; False if it changed meanwhile."""
        error_text = "lease expired on the last attempt"
        self._d.execute(cur, q.END_LEASE, {"id": task_id, "fence": fence, "to_status": TaskStatus.DEAD.value,
                                           "available_at": now, "error": error_text, "now": now})
        if cur.rowcount != 1:
            return False
        dead_letter_id = self._insert_dead_letter(cur, now, task_id, queue, "lease_expired", attempts, error_text)
        self._event(cur, now, task_id, queue, EventKind.DEAD_LETTERED, from_status=TaskStatus.LEASED,
                    to_status=TaskStatus.DEAD, owner=holder, fence=fence, attempt=attempts,
                    reason="lease_expired", detail={"dead_letter_id": dead_letter_id})
        self._lock_event(cur, now, task_id, queue, holder,
                         op, LockOutcome.RECOVER_DEAD_LETTERED, fence)
        return True

    # --- recovery -------------------------------------------------------------
    def recover_stale(self, *, batch_size: int = DEFAULT_RECOVER_BATCH, max_batches: int = 100) -> RecoveryReport:
        """Return expired leases to pending, or dead-letter them at their retry limit.

        Safe from many processes at once: each row is changed by a conditional
        UPDATE on its fencing token, and on PostgreSQL rows locked by another
        sweeper are skipped. A row whose recovery raises is rolled back to a
        savepoint, recorded as ``recover_failed`` and counted in ``failed``.
        """
        batch_size = validation.positive_int(batch_size, "batch_size", 10_000)
        max_batches = validation.positive_int(max_batches, "max_batches", 1_000_000)
        totals = RecoveryReport()
        for _ in range(max_batches):
            report = self._write(lambda cur, now: self._recover_batch(cur, now, batch_size))
            totals = RecoveryReport(*(a + b for a, b in zip(_report_tuple(totals), _report_tuple(report))))
            if report.scanned < batch_size:
                break
        if totals.scanned:
            log_recover.info("recover_stale: %s", totals)
        return totals

    def _recover_batch(self, cur: Any, now: float, batch_size: int) -> RecoveryReport:
        rows = self._d.select_expired_batch(cur, now, batch_size)
        recovered = dead = skipped = failed = 0
        for task_id, queue, holder, fence, attempts, max_attempts, _expires in rows:
            fence, attempts, max_attempts = int(fence), int(attempts), int(max_attempts)
            cur.execute("SAVEPOINT leasestore_recover")
            try:
                failpoint("recover_update")
                if attempts >= max_attempts:
                    changed = self._expire_to_dead_letter(cur, now, task_id, queue, holder, fence,
                                                          attempts, op=LockOp.RECOVER)
                    dead += changed
                else:
                    changed = self._recover_one(cur, now, task_id, queue, holder, fence, attempts)
                    recovered += changed
                skipped += not changed
                cur.execute("RELEASE SAVEPOINT leasestore_recover")
            except (FailpointError, errors.InvalidTransition) as exc:
                cur.execute("ROLLBACK TO SAVEPOINT leasestore_recover")
                cur.execute("RELEASE SAVEPOINT leasestore_recover")
                failed += 1
                self._lock_event(cur, now, task_id, queue, holder, LockOp.RECOVER,
                                 LockOutcome.RECOVER_FAILED, fence, detail={"error": str(exc)[:500]})
            except Exception as exc:
                typed = self._d.translate_error(exc)
                if isinstance(typed, errors.StoreUnavailable) or typed is None and not _is_integrity_error(exc):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT leasestore_recover")
                cur.execute("RELEASE SAVEPOINT leasestore_recover")
                failed += 1
                self._lock_event(cur, now, task_id, queue, holder, LockOp.RECOVER,
                                 LockOutcome.RECOVER_FAILED, fence, detail={"error": str(exc)[:500]})
        return RecoveryReport(len(rows), recovered, dead, skipped, failed)

    def _recover_one(self, cur: Any, now: float, task_id: str, queue: str, holder: str | None,
                     fence: int, attempts: int) -> bool:
        self._d.execute(cur, q.END_LEASE, {"id": task_id, "fence": fence, "to_status": TaskStatus.PENDING.value,
                                           "available_at": now, "error": "lease expired", "now": now})
        if cur.rowcount != 1:
            return False
        self._event(cur, now, task_id, queue, EventKind.RECOVERED, from_status=TaskStatus.LEASED,
                    to_status=TaskStatus.PENDING, owner=holder, fence=fence, attempt=attempts,
                    reason="lease_expired")
        self._lock_event(cur, now, task_id, queue, holder, LockOp.RECOVER, LockOutcome.RECOVERED, fence)
        return True

    # --- operator actions -------------------------------------------------------
    def revoke_lease(self, task_id: str, *, reason: str = "revoked by operator") -> None:
        """End whatever lease ``task_id`` has; the task goes back to pending."""
        task_id = validation.name(task_id, "task id")
        note = validation.error_text(reason)

        def body(cur: Any, now: float) -> None:
            row = self._d.select_task_for_update(cur, task_id)
            if row is None:
                raise errors.TaskNotFound(task_id)
            queue, status, holder, fence, attempts = row[1], row[2], row[5], int(row[6]), int(row[3])
            if status != TaskStatus.LEASED:
                raise errors.InvalidTransition(f"task {task_id!r} is {status}, not leased")
            self._d.execute(cur, q.END_LEASE, {"id": task_id, "fence": fence, "to_status": TaskStatus.PENDING.value,
                                               "available_at": now, "error": note, "now": now})
            self._event(cur, now, task_id, queue, EventKind.REVOKED, from_status=TaskStatus.LEASED,
                        to_status=TaskStatus.PENDING, owner=holder, fence=fence, attempt=attempts,
                        reason="revoked", detail={"note": note})
            self._lock_event(cur, now, task_id, queue, holder, LockOp.REVOKE, LockOutcome.REVOKED, fence)

        self._write(body)

    def list_dead_letters(self, *, status: str = DeadLetterStatus.OPEN, limit: int = 100) -> list[DeadLetterInfo]:
        try:
            status = DeadLetterStatus(status)
        except ValueError:
            raise errors.InvalidArgument("status must be open, requeued or resolved") from None
        limit = validation.positive_int(limit, "limit")
        sql = ("SELECT id, task_id, queue, reason, attempts, last_error, status, created_at "
               "FROM dead_letters WHERE status = :status ORDER BY id LIMIT :limit")
        rows = self._read(lambda cur, now: self._d.fetchall(cur, sql, {"status": status.value, "limit": limit}))
        return [DeadLetterInfo(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], float(r[7])) for r in rows]

    def requeue_dead_letter(self, dead_letter_id: int) -> str:
        """Put exactly one dead-lettered task back to pending with fresh attempts."""
        dead_letter_id = validation.positive_int(dead_letter_id, "dead letter id", 2**62)

        def body(cur: Any, now: float) -> str:
            dl = self._d.fetchone(cur, q.SELECT_OPEN_DEAD_LETTER, {"dead_letter_id": dead_letter_id})
            if dl is None:
                raise errors.DeadLetterNotFound(dead_letter_id)
            task_id, queue = dl[1], dl[2]
            self._d.execute(cur, q.REQUEUE_TASK, {"id": task_id, "now": now})
            if cur.rowcount != 1:
                raise errors.InvalidTransition(f"task {task_id!r} is not dead-lettered")
            self._d.execute(cur, q.CLOSE_DEAD_LETTER, {"dead_letter_id": dead_letter_id, "now": now,
                                                       "status": DeadLetterStatus.REQUEUED.value, "note": None})
            self._event(cur, now, task_id, queue, EventKind.REQUEUED, from_status=TaskStatus.DEAD,
                        to_status=TaskStatus.PENDING, attempt=0, detail={"dead_letter_id": dead_letter_id})
            return str(task_id)

        return self._write(body)

    def resolve_dead_letter(self, dead_letter_id: int, note: str | None = None) -> str:
        """Close a dead letter without running its task again."""
        dead_letter_id = validation.positive_int(dead_letter_id, "dead letter id", 2**62)
        note = validation.error_text(note)

        def body(cur: Any, now: float) -> str:
            dl = self._d.fetchone(cur, q.SELECT_OPEN_DEAD_LETTER, {"dead_letter_id": dead_letter_id})
            if dl is None:
                raise errors.DeadLetterNotFound(dead_letter_id)
            self._d.execute(cur, q.CLOSE_DEAD_LETTER, {"dead_letter_id": dead_letter_id, "now": now,
                                                       "status": DeadLetterStatus.RESOLVED.value, "note": note})
            self._event(cur, now, dl[1], dl[2], EventKind.RESOLVED, from_status=TaskStatus.DEAD,
                        to_status=TaskStatus.DEAD, detail={"dead_letter_id": dead_letter_id, "note": note})
            return str(dl[1])

        return self._write(body)

    # --- reads ------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskInfo:
        task_id = validation.name(task_id, "task id")
        row = self._read(lambda cur, now: self._d.fetchone(cur, q.SELECT_TASK, {"id": task_id}))
        if row is None:
            raise errors.TaskNotFound(task_id)
        return _task_info(row)

    def list_tasks(self, *, queue: str | None = None, status: str | None = None, limit: int = 100) -> list[TaskInfo]:
        limit = validation.positive_int(limit, "limit")
        clauses, params = [], {"limit": limit}
        if queue is not None:
            clauses.append("queue = :queue")
            params["queue"] = validation.name(queue, "queue")
        if status is not None:
            try:
                params["status"] = TaskStatus(status).value
            except ValueError:
                raise errors.InvalidArgument("status must be pending, leased, done or dead") from None
            clauses.append("status = :status")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {q.TASK_COLUMNS} FROM tasks {where} ORDER BY created_at, id LIMIT :limit"
        return [_task_info(r) for r in self._read(lambda cur, now: self._d.fetchall(cur, sql, params))]

    def status_summary(self) -> dict[str, Any]:
        """Task counts by queue and status, and the active leases with their ages."""
        def body(cur: Any, now: float) -> dict[str, Any]:
            counts = self._d.fetchall(cur, "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status ORDER BY queue, status")
            leases = self._d.fetchall(cur, "SELECT id, queue, owner, fencing_token, attempts, leased_at, lease_expires_at FROM tasks WHERE status = 'leased' ORDER BY leased_at LIMIT 200")
            return {
                "now": now,
                "counts": [{"queue": r[0], "status": r[1], "count": int(r[2])} for r in counts],
                "leases": [{"task_id": r[0], "queue": r[1], "owner": r[2], "fencing_token": int(r[3]),
                            "attempt": int(r[4]), "age_seconds": now - float(r[5]),
                            "expires_in_seconds": float(r[6]) - now} for r in leases],
            }
        return self._read(body)

    def events(self, *, task_id: str | None = None, limit: int = 50, after_id: int = 0) -> list[dict[str, Any]]:
        """The newest audit rows (or those after ``after_id``), oldest first."""
        limit = validation.positive_int(limit, "limit")
        params: dict[str, Any] = {"limit": limit, "after": int(after_id)}
        where = "WHERE id > :after"
        if task_id is not None:
            params["id"] = validation.name(task_id, "task id")
            where += " AND task_id = :id"
        order = "ASC" if after_id else "DESC"
        sql = ("SELECT id, ts, task_id, queue, kind, from_status, to_status, owner, fencing_token, "
               f"attempt, reason, detail FROM event_log {where} ORDER BY id {order} LIMIT :limit")
        rows = self._read(lambda cur, now: self._d.fetchall(cur, sql, params))
        if order == "DESC":
            rows.reverse()
        keys = ("id", "ts", "task_id", "queue", "kind", "from_status", "to_status", "owner",
                "fencing_token", "attempt", "reason", "detail")
        return [dict(zip(keys, r)) for r in rows]

    def lease(self, queue: str, owner: str, **kwargs: Any) -> Any:
        """Context manager for agents; see :class:`leasestore.agent.LeaseContext`."""
        from .agent import LeaseContext

        return LeaseContext(self, queue, owner, **kwargs)


def _lease_fields(lease: LeaseLike) -> tuple[str, str, int]:
    try:
        task_id, token, fence = lease.task_id, lease.token, lease.fencing_token
    except AttributeError:
        raise errors.InvalidArgument("expected a Lease or LeaseRef") from None
    return validation.name(task_id, "task id"), validation.token(token), validation.fencing_token(fence)


def _task_info(r: Sequence[Any]) -> TaskInfo:
    return TaskInfo(
        id=r[0], queue=r[1], status=r[2], attempts=int(r[3]), max_attempts=int(r[4]), owner=r[5],
        fencing_token=int(r[6]), lease_expires_at=None if r[7] is None else float(r[7]),
        available_at=float(r[8]), payload=validation.from_json(r[9]),
        checkpoint=validation.from_json(r[10]), last_error=r[11], dedupe_key=r[12],
        created_at=float(r[13]), updated_at=float(r[14]),
    )


def _report_tuple(r: RecoveryReport) -> tuple[int, int, int, int, int]:
    return (r.scanned, r.recovered, r.dead_lettered, r.skipped, r.failed)


def _is_integrity_error(exc: BaseException) -> bool:
    return type(exc).__name__ in ("IntegrityError", "UniqueViolation") or any(
        cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)

