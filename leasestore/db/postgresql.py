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

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from .. import errors
from .dialect import Dialect

NOW = "SELECT extract(epoch from clock_timestamp())::float8 + %(offset)s"

SELECT_NEXT_PENDING = """
SELECT id, fencing_token FROM tasks
WHERE queue = %(queue)s AND status = 'pending' AND available_at <= %(now)s
ORDER BY available_at, created_at LIMIT 1
FOR UPDATE SKIP LOCKED
"""

SELECT_EXPIRED_CANDIDATE = """
SELECT id, owner, fencing_token, lease_expires_at FROM tasks
WHERE queue = %(queue)s AND status = 'leased' AND lease_expires_at <= %(now)s
  AND attempts < max_attempts
ORDER BY lease_expires_at LIMIT 1
FOR UPDATE SKIP LOCKED
"""

SELECT_TASK_FOR_UPDATE = """
SELECT id, queue, status, attempts, max_attempts, owner, fencing_token, lease_expires_at,
       available_at, payload, checkpoint, last_error, dedupe_key, created_at, updated_at
FROM tasks WHERE id = %(id)s FOR UPDATE
"""

SELECT_EXPIRED_BATCH = """
SELECT id, queue, owner, fencing_token, attempts, max_attempts, lease_expires_at FROM tasks
WHERE status = 'leased' AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

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

# Any constant works; it only has to be the same for every init-db.
_SCHEMA_LOCK_KEY = 0x1EA5E5


class PostgresDialect(Dialect):
    name = "postgresql"
    paramstyle_named = False
    begin_write = "BEGIN"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    driver_error = psycopg.Error

    def now(self, cur: Any) -> float:
        cur.execute(NOW, {"offset": self.clock.offset})
        return float(cur.fetchone()[0])

    def select_next_pending(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        cur.execute(SELECT_NEXT_PENDING, {"queue": queue, "now": now})
        return cur.fetchone()

    def select_expired_candidate(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        cur.execute(SELECT_EXPIRED_CANDIDATE, {"queue": queue, "now": now})
        return cur.fetchone()

    def select_task_for_update(self, cur: Any, task_id: str) -> Sequence[Any] | None:
        cur.execute(SELECT_TASK_FOR_UPDATE, {"id": task_id})
        return cur.fetchone()

    def select_expired_batch(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        cur.execute(SELECT_EXPIRED_BATCH, {"now": now, "limit": limit})
        return list(cur.fetchall())

    def schema_extras(self) -> list[str]:
        return list(APPEND_ONLY_DDL)

    def lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%(key)s)", {"key": _SCHEMA_LOCK_KEY})

    def translate_error(self, exc: BaseException) -> Exception | None:
        if not isinstance(exc, psycopg.Error):
            return None
        if isinstance(exc, pg_errors.UndefinedTable):
            return errors.SchemaNotInitialized()
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return errors.StoreReadOnly(f"database is read-only: {_first_line(exc)}")
        if isinstance(exc, (pg_errors.DiskFull, pg_errors.OutOfMemory)):
            return errors.StoreFull(f"database is full: {_first_line(exc)}")
        if isinstance(
            exc,
            (
                pg_errors.LockNotAvailable,
                pg_errors.DeadlockDetected,
                pg_errors.SerializationFailure,
                pg_errors.QueryCanceled,
            ),
        ):
            return errors.StoreBusy(f"database busy: {_first_line(exc)}")
        if isinstance(exc, pg_errors.InsufficientPrivilege) and "append-only" in str(exc):
            return errors.InvalidTransition("event_log is append-only")
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return errors.StoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}")
        return None

    supports_fused = True

    def claim_next_fused(self, cur: Any, params: dict[str, Any]) -> tuple[str, Sequence[Any]] | None:
        """One statement: resume check, SKIP LOCKED pick, update and both audit rows."""
        cur.execute(CLAIM_NEXT, dict(params, offset=self.clock.offset))
        row = cur.fetchone()
        return None if row is None else (row[0], row[1:])

    def release_fused(self, cur: Any, params: dict[str, Any]) -> Sequence[Any] | None:
        """One statement: the fenced update and both audit rows (done or retry only)."""
        cur.execute(RELEASE, dict(params, offset=self.clock.offset))
        return cur.fetchone()

    def heartbeat_fused(self, cur: Any, params: dict[str, Any]) -> Sequence[Any] | None:
        """One statement: the fenced extension, its lock row and the checkpoint's event."""
        cur.execute(HEARTBEAT, dict(params, offset=self.clock.offset))
        return cur.fetchone()

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

_CLOCK = "clock AS (SELECT extract(epoch from clock_timestamp())::float8 + %(offset)s AS now)"

CLAIM_NEXT = f"""
WITH {_CLOCK},
mine AS (
  SELECT t.id FROM tasks t, clock
  WHERE %(resume)s AND t.owner = %(owner)s AND t.queue = %(queue)s AND t.status = 'leased'
    AND t.lease_expires_at > clock.now
  LIMIT 1
),
picked AS (
  SELECT t.id FROM tasks t, clock
  WHERE t.queue = %(queue)s AND t.status = 'pending' AND t.available_at <= clock.now
    AND NOT EXISTS (SELECT 1 FROM mine)
  ORDER BY t.available_at, t.created_at LIMIT 1
  FOR UPDATE OF t SKIP LOCKED
),
upd AS (
  UPDATE tasks t SET status = 'leased', owner = %(owner)s, lease_token_hash = %(token_hash)s,
         fencing_token = t.fencing_token + 1, attempts = t.attempts + 1,
         lease_expires_at = clock.now + %(ttl)s, leased_at = clock.now, updated_at = clock.now
  FROM picked, clock
  WHERE t.id = picked.id AND t.status = 'pending'
  RETURNING t.id, t.queue, t.owner, t.fencing_token, t.lease_expires_at, t.attempts,
            t.max_attempts, t.payload, t.checkpoint, clock.now AS now
),
ev AS (
  INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token, attempt)
  SELECT now, id, queue, 'claimed', 'pending', 'leased', owner, fencing_token, attempts FROM upd
),
lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token)
  SELECT now, id, queue, owner, 'claim', 'acquired', fencing_token FROM upd
)
SELECT 'claimed', id, queue, owner, fencing_token, lease_expires_at, attempts, max_attempts,
       payload, checkpoint FROM upd
UNION ALL
SELECT 'mine', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM mine
"""

RELEASE = f"""
WITH {_CLOCK},
upd AS (
  UPDATE tasks t SET status = %(to_status)s::text, lease_token_hash = NULL, lease_expires_at = NULL,
         available_at = clock.now + %(delay)s, last_error = %(error)s, updated_at = clock.now
  FROM clock
  WHERE t.id = %(id)s AND t.lease_token_hash = %(token_hash)s AND t.fencing_token = %(fence)s
    AND t.status = 'leased' AND t.lease_expires_at > clock.now
  RETURNING t.queue, t.owner, t.available_at, clock.now AS now
),
ev AS (
  INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token,
                         attempt, reason, detail)
  SELECT now, %(id)s, queue, %(kind)s::text, 'leased', %(to_status)s::text, owner, %(fence)s, %(attempt)s,
         %(reason)s,
         CASE WHEN %(kind)s::text = 'retry_scheduled'
              THEN '{{"retry_at":' || available_at::text || '}}' END
  FROM upd
),
lk AS (
  INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token, detail)
  SELECT now, %(id)s, queue, owner, 'release', 'released', %(fence)s,
         '{{"outcome":"' || %(kind)s::text || '"}}'
  FROM upd
)
SELECT queue, owner, available_at FROM upd
"""

# ``%(checkpointing)s`` false leaves the stored checkpoint as it is and writes no event.
HEARTBEAT = f"""
WITH {_CLOCK},
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
SELECT fencing_token, lease_expires_at FROM upd
"""
