"""Dialect-neutral SQL, written with ``:name`` parameters.

``sqlite3`` takes ``:name`` as is; :func:`to_pyformat` rewrites a statement for
psycopg. Statements whose text must differ by dialect live in ``sqlite.py`` and
``postgresql.py`` under the same names. ``:now`` is always the database clock,
read once per transaction (see ``Dialect.now``).
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def to_pyformat(sql: str) -> str:
    """``:name`` → ``%(name)s``, leaving ``::casts`` alone."""
    return _PARAM.sub(r"%(\1)s", sql)


LEASE_COLUMNS = (
    "id, queue, owner, fencing_token, lease_expires_at, attempts, max_attempts, payload, checkpoint"
)

TASK_COLUMNS = (
    "id, queue, status, attempts, max_attempts, owner, fencing_token, lease_expires_at, "
    "available_at, payload, checkpoint, last_error, dedupe_key, created_at, updated_at"
)

INSERT_TASK = """
INSERT INTO tasks (id, queue, payload, status, attempts, max_attempts, fencing_token,
                   available_at, dedupe_key, created_at, updated_at)
VALUES (:id, :queue, :payload, 'pending', 0, :max_attempts, 0,
        :now + :delay, :dedupe_key, :now, :now)
"""

SELECT_BY_DEDUPE = f"SELECT {TASK_COLUMNS} FROM tasks WHERE queue = :queue AND dedupe_key = :dedupe_key"

SELECT_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"

SELECT_OWN_LEASE = """
SELECT id FROM tasks
WHERE owner = :owner AND queue = :queue AND status = 'leased' AND lease_expires_at > :now
ORDER BY leased_at LIMIT 1
"""

# The same owner claiming again gets its lease back with a fresh secret: the
# previous incarnation's token stops working, so at most one process per owner
# can write.
RESUME = f"""
UPDATE tasks SET lease_token_hash = :token_hash, updated_at = :now,
       lease_expires_at = CASE WHEN lease_expires_at > :now + :ttl
                               THEN lease_expires_at ELSE :now + :ttl END
WHERE id = :id AND owner = :owner AND status = 'leased' AND lease_expires_at > :now
RETURNING {LEASE_COLUMNS}
"""

ACQUIRE = f"""
UPDATE tasks SET status = 'leased', owner = :owner, lease_token_hash = :token_hash,
       fencing_token = fencing_token + 1, attempts = attempts + 1,
       lease_expires_at = :now + :ttl, leased_at = :now, updated_at = :now
WHERE id = :id AND fencing_token = :fence AND status = :from_status
RETURNING {LEASE_COLUMNS}
"""

HEARTBEAT = """
UPDATE tasks SET lease_expires_at = :now + :ttl, updated_at = :now
WHERE id = :id AND lease_token_hash = :token_hash AND fencing_token = :fence
  AND status = 'leased' AND lease_expires_at > :now
RETURNING queue, owner, fencing_token, lease_expires_at
"""

HEARTBEAT_CHECKPOINT = """
UPDATE tasks SET lease_expires_at = :now + :ttl, updated_at = :now, checkpoint = :checkpoint
WHERE id = :id AND lease_token_hash = :token_hash AND fencing_token = :fence
  AND status = 'leased' AND lease_expires_at > :now
RETURNING queue, owner, fencing_token, lease_expires_at
"""

# Every write by a holder names its token hash and fencing token and requires
# an unexpired lease in the same statement: a holder whose lease ended changes nothing.
# ``owner`` is kept as the last holder (RETURNING shows the new row, and
# operators want to know who finished a task).
RELEASE = """
UPDATE tasks SET status = :to_status, lease_token_hash = NULL,
       lease_expires_at = NULL, available_at = :available_at, last_error = :error,
       updated_at = :now
WHERE id = :id AND lease_token_hash = :token_hash AND fencing_token = :fence
  AND status = 'leased' AND lease_expires_at > :now
RETURNING queue, owner, attempts, max_attempts
"""

# Ends a lease regardless of its token: used by recovery and by operators.
END_LEASE = """
UPDATE tasks SET status = :to_status, owner = NULL, lease_token_hash = NULL,
       lease_expires_at = NULL, available_at = :available_at, last_error = :error,
       updated_at = :now
WHERE id = :id AND fencing_token = :fence AND status = 'leased'
"""

LEASE_END_EVENT = """
SELECT kind, reason FROM event_log
WHERE task_id = :id AND fencing_token >= :fence
  AND kind IN ('taken_over', 'released', 'retry_scheduled', 'dead_lettered', 'recovered', 'revoked')
ORDER BY id LIMIT 1
"""

INSERT_EVENT = """
INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner,
                       fencing_token, attempt, reason, detail)
VALUES (:now, :id, :queue, :kind, :from_status, :to_status, :owner,
        :fence, :attempt, :reason, :detail)
"""

INSERT_LOCK_EVENT = """
INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token, detail)
VALUES (:now, :id, :queue, :owner, :op, :outcome, :fence, :detail)
"""

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (task_id, queue, reason, attempts, last_error, status, created_at)
VALUES (:id, :queue, :reason, :attempts, :error, 'open', :now)
RETURNING id
"""

SELECT_OPEN_DEAD_LETTER = """
SELECT id, task_id, queue, reason, attempts, last_error, status, created_at
FROM dead_letters WHERE id = :dead_letter_id AND status = 'open'
"""

CLOSE_DEAD_LETTER = """
UPDATE dead_letters SET status = :status, closed_at = :now, note = :note
WHERE id = :dead_letter_id AND status = 'open'
"""

REQUEUE_TASK = """
UPDATE tasks SET status = 'pending', attempts = 0, available_at = :now, updated_at = :now,
       last_error = NULL
WHERE id = :id AND status = 'dead'
"""

SELECT_EXPIRED_BATCH = """
SELECT id, queue, owner, fencing_token, attempts, max_attempts, lease_expires_at FROM tasks
WHERE status = 'leased' AND lease_expires_at <= :now
ORDER BY lease_expires_at LIMIT :limit
"""

INSERT_ALERT = """
INSERT INTO alerts (ts, metric, value, threshold, window_minutes)
VALUES (:now, :metric, :value, :threshold, :window_minutes)
"""
