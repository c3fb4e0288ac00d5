"""PostgreSQL through psycopg 3: row locks with ``FOR UPDATE SKIP LOCKED``.

Connections run in autocommit; a write transaction is an explicit
``BEGIN … COMMIT`` at READ COMMITTED, where each UPDATE rechecks its WHERE
clause on the locked row. Claimers and sweepers skip rows another transaction
holds, so they never queue behind each other (nor behind a paused process).
The locking SELECT sits in its own statement (never ``WHERE id IN (subquery)``,
which the planner may re-run and so update more rows than the LIMIT).

Time is the server's ``clock_timestamp()``, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy.engine import URL

from .. import errors
from . import audit
from . import queries as q
from .driver import (ClaimNextKind, ClaimNextRow, ClaimParams, Driver, ExtendParams, Fetch, ReleaseParams, Step,
                     Stmt, dumps)
from .rows import CandidateRow, ExpiredRow, ExtendRow, LeaseRow, PendingRow, ReleaseRow, TaskRow

# The server's clock, read when evaluated (``clock_timestamp()``, not the
# transaction's start), plus the store's offset, or the store's frozen instant.
CLOCK = "COALESCE(%(frozen)s::float8, extract(epoch from clock_timestamp())::float8 + %(offset)s)"
NOW = f"SELECT {CLOCK}"

# The shared selects, each locking its row; claimers and sweepers skip rows
# another transaction holds.
SELECT_NEXT_PENDING = q.to_pyformat(q.SELECT_NEXT_PENDING) + "FOR UPDATE SKIP LOCKED"
SELECT_EXPIRED_CANDIDATE = q.to_pyformat(q.SELECT_EXPIRED_CANDIDATE) + "FOR UPDATE SKIP LOCKED"
SELECT_EXPIRED_BATCH = q.to_pyformat(q.SELECT_EXPIRED_BATCH) + "FOR UPDATE SKIP LOCKED"
SELECT_TASK_FOR_UPDATE = q.to_pyformat(q.SELECT_TASK) + " FOR UPDATE"
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(%(key)s)"

APPEND_ONLY_DDL = [
    """CREATE OR REPLACE FUNCTION leasestore_event_log_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         RAISE EXCEPTION 'event_log is append-only' USING ERRCODE = 'insufficient_privilege';
       END $$""",
    "DROP TRIGGER IF EXISTS event_log_no_update_delete ON event_log",
    """CREATE TRIGGER event_log_no_update_delete BEFORE UPDATE OR DELETE ON event_log
       FOR EACH ROW EXECUTE FUNCTION leasestore_event_log_append_only()""",
    "DROP TRIGGER IF EXISTS event_log_no_truncate ON event_log",
    """CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
       FOR EACH STATEMENT EXECUTE FUNCTION leasestore_event_log_append_only()""",
]

# A task that becomes pending wakes the claims waiting on its queue. PostgreSQL
# folds identical notifications of one transaction into one.
READY_CHANNEL = "leasestore_ready"
READY_NOTIFY_DDL = [
    f"""CREATE OR REPLACE FUNCTION leasestore_notify_ready() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM pg_notify('{READY_CHANNEL}', NEW.queue);
         RETURN NULL;
       END $$""",
    "DROP TRIGGER IF EXISTS tasks_notify_ready ON tasks",
    """CREATE TRIGGER tasks_notify_ready AFTER INSERT OR UPDATE OF status ON tasks
       FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION leasestore_notify_ready()""",
]
LISTEN_READY = f"LISTEN {READY_CHANNEL}"

# Any constant works; it only has to be the same for every init-db.
_SCHEMA_LOCK_KEY = 0x1EA5E5


class PostgresDriver(Driver):
    """Row locks with ``SKIP LOCKED``; claim, heartbeat and release in one statement."""

    name = "postgresql"
    named_params = False
    begin_write_sql = "BEGIN"
    begin_read_sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def now(self) -> Step[float]:
        row = yield Stmt(NOW, self.clock.params(), Fetch.ONE)
        return float(row[0])

    def next_pending(self, queue: str, owner: str, now: float) -> Step[PendingRow | None]:
        row = yield Stmt(SELECT_NEXT_PENDING, {"queue": queue, "owner": owner, "now": now, "limit": 1}, Fetch.ONE)
        return PendingRow.from_row(row) if row is not None else None

    def expired_candidate(self, queue: str, owner: str, now: float) -> Step[CandidateRow | None]:
        row = yield Stmt(SELECT_EXPIRED_CANDIDATE, {"queue": queue, "owner": owner, "now": now}, Fetch.ONE)
        return CandidateRow.from_row(row) if row is not None else None

    def task_for_update(self, task_id: str) -> Step[TaskRow | None]:
        row = yield Stmt(SELECT_TASK_FOR_UPDATE, {"id": task_id}, Fetch.ONE)
        return TaskRow.from_row(row) if row is not None else None

    def expired_batch(self, now: float, limit: int) -> Step[list[ExpiredRow]]:
        rows = yield Stmt(SELECT_EXPIRED_BATCH, {"now": now, "limit": limit}, Fetch.ALL)
        return [ExpiredRow.from_row(r) for r in rows]

    def claim_next(self, p: ClaimParams) -> Step[ClaimNextRow]:
        row = yield Stmt(CLAIM_NEXT, {**self.clock.params(), "queue": p.queue, "owner": p.owner,
                                      "token_hash": p.token_hash, "ttl": p.ttl, "resume": p.resume},
                         Fetch.ONE)
        if row is None:
            return ClaimNextRow(ClaimNextKind.NONE)
        if row[0] != "claimed":
            return ClaimNextRow(ClaimNextKind(row[0]), task_id=str(row[1]))
        lease = LeaseRow.from_row(row[1:])
        return ClaimNextRow(ClaimNextKind.ACQUIRED, lease=lease, task_id=lease.task_id)

    def extend(self, p: ExtendParams) -> Step[ExtendRow | None]:
        row = yield Stmt(HEARTBEAT, {**self.clock.params(), "id": p.task_id, "token_hash": p.token_hash,
                                     "fence": p.fence, "ttl": p.ttl, "checkpoint": p.checkpoint,
                                     "checkpointing": p.checkpointing}, Fetch.ONE)
        return ExtendRow.from_row(row) if row is not None else None

    def release(self, p: ReleaseParams) -> Step[ReleaseRow | None]:
        row = yield Stmt(RELEASE, {**self.clock.params(), "id": p.task_id, "token_hash": p.token_hash,
                                   "fence": p.fence, "to_status": p.to_status, "delay": p.delay,
                                   "error": p.error, "kind": p.event_kind, "reason": p.event_reason,
                                   "attempt": p.attempt, "lock_detail": p.lock_outcome_detail,
                                   "dead_letter_reason": p.dead_letter_reason, "result": p.result}, Fetch.ONE)
        return ReleaseRow.from_row(row) if row is not None else None

    def claim_many(self, p: ClaimParams, token_hashes: Sequence[str]) -> Step[list[tuple[int, LeaseRow]]]:
        rows = yield Stmt(CLAIM_MANY, {**self.clock.params(), "queue": p.queue, "owner": p.owner,
                                       "hashes": list(token_hashes), "limit": len(token_hashes),
                                       "ttl": p.ttl}, Fetch.ALL)
        return sorted((int(r[0]) - 1, LeaseRow.from_row(r[1:])) for r in rows)

    def schema_extras(self) -> list[str]:
        return list(APPEND_ONLY_DDL) + list(READY_NOTIFY_DDL)

    def lock_schema(self) -> Step[None]:
        yield Stmt(LOCK_SCHEMA, {"key": _SCHEMA_LOCK_KEY}, Fetch.ONE)

    def translate_error(self, exc: BaseException) -> errors.LeaseStoreError | None:
        if not isinstance(exc, psycopg.Error):
            return None
        if isinstance(exc, pg_errors.UndefinedTable):
            return errors.SchemaNotInitialized()
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return errors.StoreReadOnly(f"database is read-only: {_first_line(exc)}")
        if isinstance(exc, (pg_errors.DiskFull, pg_errors.OutOfMemory)):
            return errors.StoreFull(f"database is full: {_first_line(exc)}")
        if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected,
                            pg_errors.SerializationFailure, pg_errors.QueryCanceled)):
            return errors.StoreBusy(f"database busy: {_first_line(exc)}")
        if isinstance(exc, pg_errors.InsufficientPrivilege) and "append-only" in str(exc):
            return errors.InvalidTransition("event_log is append-only")
        if isinstance(exc, psycopg.DataError):
            # Validation bounds what the store is given; this is the backstop.
            return errors.InvalidArgument(f"value out of range: {_first_line(exc)}")
        if isinstance(exc, pg_errors.UniqueViolation):
            return errors.DuplicateKey(f"duplicate key: {_first_line(exc)}")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return errors.StoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}")
        return None

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, (pg_errors.AdminShutdown, pg_errors.CrashShutdown)):
            return True
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and not isinstance(
            exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled, pg_errors.DiskFull)
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- one-round-trip hot paths -------------------------------------------------
# Each is a single autocommitted statement (data-modifying CTEs), so a claim or
# a release costs one round trip instead of six. They write exactly the rows the
# generic multi-statement path writes.
# A holder's write may wait for a row lock another writer holds. Its clock is
# read only once the row is locked (``clock`` reads from ``locked``), so expiry
# is judged as of the write, not as of before the wait. The claim needs no such
# care: it skips locked rows instead of waiting for them.

_CLOCK = f"clock AS (SELECT {CLOCK} AS now)"
# The audit rows of every task an ``upd`` CTE leased from pending.
_CLAIMED_AUDIT = """ev AS (
  INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token, attempt)
  SELECT now, id, queue, 'claimed', 'pending', 'leased', owner, fencing_token, attempts FROM upd
),
lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token)
  SELECT now, id, queue, owner, 'claim', 'acquired', fencing_token FROM upd
)"""

# SELECT_HELD_BACK reading the claim's clock.
_HELD_BACK = q.to_pyformat(q.SELECT_HELD_BACK).replace("%(now)s", "clock.now")

_LOCKED_CLOCK = f"""locked AS (SELECT id FROM tasks WHERE id = %(id)s FOR UPDATE),
clock AS (SELECT {CLOCK} AS now FROM locked)"""

CLAIM_NEXT = f"""
WITH {_CLOCK},
mine AS (
  SELECT t.id FROM tasks t, clock
  WHERE %(resume)s AND t.owner = %(owner)s AND t.queue = %(queue)s AND t.status = 'leased'
    AND t.lease_expires_at > clock.now
  ORDER BY t.leased_at LIMIT 1
),
picked AS (
  SELECT t.id FROM tasks t, clock
  WHERE t.queue = %(queue)s AND t.status = 'pending'
    AND (t.available_at <= clock.now OR t.held_for = %(owner)s)
    AND NOT EXISTS (SELECT 1 FROM mine)
  ORDER BY t.priority DESC, t.available_at, t.created_at LIMIT 1
  FOR UPDATE OF t SKIP LOCKED
),
expired AS (
  SELECT t.id FROM tasks t, clock
  WHERE t.queue = %(queue)s AND t.status = 'leased' AND t.lease_expires_at <= clock.now
    AND (t.lease_expires_at + t.lock_delay <= clock.now OR t.owner = %(owner)s)
    AND t.attempts < t.max_attempts
    AND NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM picked)
  ORDER BY t.lease_expires_at LIMIT 1
),
held AS (
  SELECT h.id, h.fencing_token, h.held_until FROM clock,
    LATERAL ({_HELD_BACK}) h
  WHERE NOT EXISTS (SELECT 1 FROM mine) AND NOT EXISTS (SELECT 1 FROM picked)
    AND NOT EXISTS (SELECT 1 FROM expired)
),
held_lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token, detail)
  SELECT clock.now, held.id, %(queue)s, %(owner)s, 'claim', 'lock_delayed', held.fencing_token,
         '{{"held_until":' || held.held_until::text || '}}'
  FROM held, clock
),
upd AS (
  UPDATE tasks t SET status = 'leased', owner = %(owner)s, lease_token_hash = %(token_hash)s,
         fencing_token = t.fencing_token + 1, attempts = t.attempts + 1,
         lease_expires_at = clock.now + %(ttl)s, leased_at = clock.now, updated_at = clock.now,
         held_for = NULL
  FROM picked, clock
  WHERE t.id = picked.id AND t.status = 'pending'
  RETURNING t.id, t.queue, t.owner, t.fencing_token, t.lease_expires_at, t.attempts,
            t.max_attempts, t.payload, t.checkpoint, clock.now AS now
),
{_CLAIMED_AUDIT}
SELECT 'claimed', id, queue, owner, fencing_token, lease_expires_at, attempts, max_attempts,
       payload, checkpoint FROM upd
UNION ALL
SELECT 'mine', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM mine
UNION ALL
SELECT 'expired', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM expired
UNION ALL
SELECT 'held', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM held
"""

# Up to %(limit)s ready tasks leased at once, the n-th with the n-th token hash.
CLAIM_MANY = f"""
WITH {_CLOCK},
picked AS (
  SELECT t.id, t.priority, t.available_at, t.created_at FROM tasks t, clock
  WHERE t.queue = %(queue)s AND t.status = 'pending'
    AND (t.available_at <= clock.now OR t.held_for = %(owner)s)
  ORDER BY t.priority DESC, t.available_at, t.created_at LIMIT %(limit)s
  FOR UPDATE OF t SKIP LOCKED
),
numbered AS (
  SELECT id, row_number() OVER (ORDER BY priority DESC, available_at, created_at, id) AS n FROM picked
),
upd AS (
  UPDATE tasks t SET status = 'leased', owner = %(owner)s,
         lease_token_hash = (%(hashes)s::text[])[numbered.n],
         fencing_token = t.fencing_token + 1, attempts = t.attempts + 1,
         lease_expires_at = clock.now + %(ttl)s, leased_at = clock.now, updated_at = clock.now,
         held_for = NULL
  FROM numbered, clock
  WHERE t.id = numbered.id AND t.status = 'pending'
  RETURNING numbered.n, t.id, t.queue, t.owner, t.fencing_token, t.lease_expires_at, t.attempts,
            t.max_attempts, t.payload, t.checkpoint, clock.now AS now
),
{_CLAIMED_AUDIT}
SELECT n, id, queue, owner, fencing_token, lease_expires_at, attempts, max_attempts, payload, checkpoint FROM upd
"""

_RESULT_DETAIL = dumps(audit.RESULT_DETAIL)
# A dead-lettering release also opens its dead letter; the event's detail names it.
RELEASE = f"""
WITH {_LOCKED_CLOCK},
upd AS (
  UPDATE tasks t SET status = %(to_status)s::text, lease_token_hash = NULL, lease_expires_at = NULL,
         available_at = clock.now + %(delay)s, last_error = %(error)s, result = %(result)s,
         updated_at = clock.now
  FROM clock
  WHERE t.id = %(id)s AND t.lease_token_hash = %(token_hash)s AND t.fencing_token = %(fence)s
    AND t.status = 'leased' AND t.lease_expires_at > clock.now
  RETURNING t.queue, t.owner, t.available_at, clock.now AS now
),
dl AS (
  INSERT INTO dead_letters (task_id, queue, reason, attempts, last_error, status, created_at)
  SELECT %(id)s, queue, %(dead_letter_reason)s::text, %(attempt)s, %(error)s, 'open', now FROM upd
  WHERE %(dead_letter_reason)s::text IS NOT NULL
  RETURNING id
),
ev AS (
  INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token,
                         attempt, reason, detail)
  SELECT now, %(id)s, queue, %(kind)s::text, 'leased', %(to_status)s::text, owner, %(fence)s, %(attempt)s,
         %(reason)s,
         CASE WHEN %(kind)s::text = 'retry_scheduled'
              THEN '{{"retry_at":' || available_at::text || '}}'
              WHEN %(dead_letter_reason)s::text IS NOT NULL
              THEN '{{"dead_letter_id":' || (SELECT id FROM dl)::text || '}}'
              WHEN %(result)s::text IS NOT NULL THEN '{_RESULT_DETAIL}' END
  FROM upd
),
lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token, detail)
  SELECT now, %(id)s, queue, owner, 'release', 'released', %(fence)s, %(lock_detail)s FROM upd
)
SELECT queue, owner, available_at, (SELECT id FROM dl) FROM upd
"""

# ``%(checkpointing)s`` false leaves the stored checkpoint as it is and writes no event.
HEARTBEAT = f"""
WITH {_LOCKED_CLOCK},
upd AS (
  UPDATE tasks t SET lease_expires_at = clock.now + %(ttl)s, updated_at = clock.now,
         checkpoint = CASE WHEN %(checkpointing)s THEN %(checkpoint)s::text ELSE t.checkpoint END
  FROM clock
  WHERE t.id = %(id)s AND t.lease_token_hash = %(token_hash)s AND t.fencing_token = %(fence)s
    AND t.status = 'leased' AND t.lease_expires_at > clock.now
  RETURNING t.queue, t.owner, t.fencing_token, t.lease_expires_at, clock.now AS now
),
ev AS (
  INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token)
  SELECT now, %(id)s, queue, 'checkpointed', 'leased', 'leased', owner, fencing_token FROM upd
  WHERE %(checkpointing)s
),
lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token)
  SELECT now, %(id)s, queue, owner, 'heartbeat', 'extended', fencing_token FROM upd
)
SELECT queue, owner, fencing_token, lease_expires_at FROM upd
"""


# --- connections ----------------------------------------------------------------
# Socket and server limits keep every call bounded on a dead network: a write
# unacknowledged for TCP_USER_TIMEOUT fails, an idle socket is probed every few
# seconds, and no statement runs past STATEMENT_TIMEOUT.
CONNECT_TIMEOUT = 5
TCP_USER_TIMEOUT_MS = 10_000
KEEPALIVES_IDLE = 5
KEEPALIVES_INTERVAL = 2
KEEPALIVES_COUNT = 3
STATEMENT_TIMEOUT_MS = 30_000
# A process paused inside a transaction keeps its row locks until this ends its session.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000


def connect_kwargs(url: URL) -> tuple[str, dict[str, Any]]:
    """(conninfo, psycopg connect keywords) for a ``postgresql+psycopg://`` URL.

    Options given in the URL (e.g. a ``search_path``) are kept beside ours; a
    value the URL sets itself wins over the defaults here."""
    options = url.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    ours = (f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}")
    kwargs: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "options": f"{ours} {options}".strip(),
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE,
        "keepalives_interval": KEEPALIVES_INTERVAL,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "application_name": "leasestore",
    }
    for key in list(kwargs):
        if key != "options" and key in url.query:
            del kwargs[key]  # the operator's setting wins
    plain = url.set(drivername="postgresql").difference_update_query(["options"])
    return plain.render_as_string(hide_password=False), kwargs


# --- waking claims that wait -----------------------------------------------------


class ReadyListener:
    """A connection of its own that LISTENs for tasks becoming pending."""

    notified = True

    def __init__(self, url: URL) -> None:
        conninfo, kwargs = connect_kwargs(url)
        self._conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
        self._conn.execute(LISTEN_READY)

    def wait(self, queue: str, timeout: float) -> bool:
        """Whether ``queue`` got a ready task within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for note in self._conn.notifies(timeout=left, stop_after=1):
                if note.payload == queue:
                    return True
        return False

    def close(self) -> None:
        self._conn.close()


class AsyncReadyHub:
    """One LISTEN connection for every waiting claim of an asyncio store.

    A notification wakes one waiter of its queue, not all of them (a hundred
    agents on one loop would otherwise all claim for each new task); a waiter
    that got a task passes the wake-up on, so a batch of new tasks is drained
    by as many waiters as it has tasks."""

    notified = True

    def __init__(self, url: URL) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, collections.deque[asyncio.Future[bool]]] = {}
        self._generation: collections.Counter[str] = collections.Counter()
        self._opening = asyncio.Lock()

    def generation(self, queue: str) -> int:
        """How many notifications ``queue`` has had: a waiter notes it before it
        looks, so one that arrives between its look and its wait is not lost."""
        return self._generation[queue]

    async def listening(self) -> None:
        """Listen from now on (before the look that a wait will follow)."""
        await self._ensure_listening()

    async def _ensure_listening(self) -> None:
        async with self._opening:
            if self._reader is not None and not self._reader.done():
                return
            conninfo, kwargs = connect_kwargs(self._url)
            self._conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **kwargs)
            await self._conn.execute(LISTEN_READY)
            self._reader = asyncio.create_task(self._read(self._conn), name="leasestore-ready-listener")

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for note in conn.notifies():
                self._generation[note.payload] += 1
                self.wake(note.payload)
        except psycopg.Error:
            # The connection is gone: wake everyone, so each looks for itself
            # and the next wait reconnects.
            for queue in list(self._waiters):
                while self.wake(queue):
                    pass

    def wake(self, queue: str) -> bool:
        """Wake one waiter of ``queue``; False if none was waiting."""
        waiting = self._waiters.get(queue)
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(True)
                return True
        return False

    async def wait(self, queue: str, timeout: float, seen: int) -> bool:
        await self._ensure_listening()
        if self._generation[queue] != seen:
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(queue, collections.deque()).append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
