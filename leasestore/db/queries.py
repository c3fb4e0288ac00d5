"""Every statement both backends share, named once, with ``:name`` parameters.

``sqlite3`` takes ``:name`` as is; :func:`to_pyformat` rewrites a statement for
psycopg (once per statement, see ``Driver.text``). Statements one backend runs
its own way live in ``sqlite.py`` or ``postgresql.py``. ``:now`` is always the
database clock as the step read it (see ``Driver.now``).
"""

from __future__ import annotations

import re
from typing import Literal

from ..states import EventKind, LockOutcome

_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def to_pyformat(sql: str) -> str:
    """``:name`` → ``%(name)s``, leaving ``::casts`` alone."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


LEASE_COLUMNS = (
    "id, queue, owner, fencing_token, lease_expires_at, attempts, max_attempts, payload, checkpoint"
)

TASK_COLUMNS = (
    "id, queue, status, attempts, max_attempts, owner, fencing_token, lease_expires_at, "
    "available_at, payload, checkpoint, last_error, dedupe_key, created_at, updated_at, priority, result, "
    "lock_delay, held_for"
)

EVENT_COLUMNS = ("id, ts, task_id, queue, kind, from_status, to_status, owner, fencing_token, "
                 "attempt, reason, detail")

DEAD_LETTER_COLUMNS = "id, task_id, queue, reason, attempts, last_error, status, created_at"

# --- enqueue ------------------------------------------------------------------

INSERT_TASK = """
INSERT INTO tasks (id, queue, payload, status, attempts, max_attempts, fencing_token,
                   available_at, dedupe_key, created_at, updated_at, priority, lock_delay)
VALUES (:id, :queue, :payload, 'pending', 0, :max_attempts, 0,
        :now + :delay, :dedupe_key, :now, :now, :priority, :lock_delay)
"""

SELECT_BY_DEDUPE = f"SELECT {TASK_COLUMNS} FROM tasks WHERE queue = :queue AND dedupe_key = :dedupe_key"

SELECT_TASK = f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"

# --- claims ---------------------------------------------------------------------

SELECT_OWN_LEASE = """
SELECT id FROM tasks
WHERE owner = :owner AND queue = :queue AND status = 'leased' AND lease_expires_at > :now
ORDER BY leased_at LIMIT 1
"""

# Higher priority first, then the oldest ready task (index ix_tasks_ready). A
# task whose lock-delay runs is ready only for the owner it is held for.
SELECT_NEXT_PENDING = """
SELECT id, fencing_token FROM tasks
WHERE queue = :queue AND status = 'pending' AND (available_at <= :now OR held_for = :owner)
ORDER BY priority DESC, available_at, created_at LIMIT :limit
"""

SELECT_EXPIRED_CANDIDATE = """
SELECT id, owner, fencing_token, lease_expires_at, lock_delay FROM tasks
WHERE queue = :queue AND status = 'leased' AND lease_expires_at <= :now
  AND (lease_expires_at + lock_delay <= :now OR owner = :owner)
  AND attempts < max_attempts
ORDER BY lease_expires_at LIMIT 1
"""

# A task another owner's claim would have had but for its lock-delay, and when
# the delay ends: pending after an unreleased lease ended, or leased and expired
# but still inside the delay.
SELECT_HELD_BACK = """
SELECT id, fencing_token,
       CASE WHEN status = 'pending' THEN available_at ELSE lease_expires_at + lock_delay END AS held_until
FROM tasks
WHERE queue = :queue AND (
    (status = 'pending' AND held_for IS NOT NULL AND held_for <> :owner AND available_at > :now)
 OR (status = 'leased' AND lease_expires_at <= :now AND lease_expires_at + lock_delay > :now
     AND owner <> :owner AND attempts < max_attempts))
LIMIT 1
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
       lease_expires_at = :now + :ttl, leased_at = :now, updated_at = :now, held_for = NULL
WHERE id = :id AND fencing_token = :fence AND status = :from_status
RETURNING {LEASE_COLUMNS}
"""

# When the next pending task of a queue becomes ready (a claim that waits sleeps until then).
NEXT_AVAILABLE_AT = "SELECT MIN(available_at) FROM tasks WHERE queue = :queue AND status = 'pending'"

# --- holder writes ----------------------------------------------------------------
# Every write by a holder names its token hash and fencing token and requires
# an unexpired lease in the same statement: a holder whose lease ended changes nothing.

EXTEND = """
UPDATE tasks SET lease_expires_at = :now + :ttl, updated_at = :now,
       checkpoint = CASE WHEN :checkpointing THEN :checkpoint ELSE checkpoint END
WHERE id = :id AND lease_token_hash = :token_hash AND fencing_token = :fence
  AND status = 'leased' AND lease_expires_at > :now
RETURNING queue, owner, fencing_token, lease_expires_at
"""

# ``owner`` is kept as the last holder: operators want to know who finished a task.
RELEASE = """
UPDATE tasks SET status = :to_status, lease_token_hash = NULL,
       lease_expires_at = NULL, available_at = :now + :delay, last_error = :error,
       result = :result, updated_at = :now
WHERE id = :id AND lease_token_hash = :token_hash AND fencing_token = :fence
  AND status = 'leased' AND lease_expires_at > :now
RETURNING queue, owner, available_at
"""

SELECT_ATTEMPTS = "SELECT attempts, max_attempts, queue FROM tasks WHERE id = :id"

SELECT_LEASE_STATE = """
SELECT queue, status, fencing_token, lease_token_hash, lease_expires_at, owner
FROM tasks WHERE id = :id
"""

LEASE_END_EVENT = """
SELECT kind, reason FROM event_log
WHERE task_id = :id AND fencing_token >= :fence
  AND kind IN ('taken_over', 'released', 'retry_scheduled', 'dead_lettered', 'recovered', 'revoked')
ORDER BY id LIMIT 1
"""

# --- ending leases without their token: recovery and operators ------------------------

SELECT_EXPIRED_BATCH = """
SELECT id, queue, owner, fencing_token, attempts, max_attempts, lease_expires_at, lock_delay FROM tasks
WHERE status = 'leased' AND lease_expires_at <= :now
ORDER BY lease_expires_at LIMIT :limit
"""

# A lease that ends unreleased back to pending starts the task's lock-delay:
# until ``lease_expires_at + lock_delay`` only its owner may lease it again.
# (SET reads the row as it was, so ``owner`` is the ended lease's.)
END_LEASE = """
UPDATE tasks SET status = :to_status, owner = NULL, lease_token_hash = NULL,
       lease_expires_at = NULL, last_error = :error, updated_at = :now,
       available_at = CASE WHEN :holds AND lock_delay > 0 AND lease_expires_at + lock_delay > :now
                           THEN lease_expires_at + lock_delay ELSE :now END,
       held_for = CASE WHEN :holds AND lock_delay > 0 AND lease_expires_at + lock_delay > :now
                       THEN owner END
WHERE id = :id AND fencing_token = :fence AND status = 'leased'
"""

# --- audit rows ---------------------------------------------------------------------

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

# --- dead letters ------------------------------------------------------------------------

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (task_id, queue, reason, attempts, last_error, status, created_at)
VALUES (:id, :queue, :reason, :attempts, :error, 'open', :now)
RETURNING id
"""

SELECT_OPEN_DEAD_LETTER = f"""
SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = :dead_letter_id AND status = 'open'
"""

SELECT_DEAD_LETTERS = f"""
SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE status = :status ORDER BY id LIMIT :limit
"""

CLOSE_DEAD_LETTER = """
UPDATE dead_letters SET status = :status, closed_at = :now, note = :note
WHERE id = :dead_letter_id AND status = 'open'
"""

REQUEUE_TASK = """
UPDATE tasks SET status = 'pending', attempts = 0, available_at = :now, updated_at = :now,
       last_error = NULL, held_for = NULL
WHERE id = :id AND status = 'dead'
"""

# --- queue settings -----------------------------------------------------------------

QUEUE_SETTINGS_COLUMNS = "queue, lock_delay, lease_ttl, max_attempts, retry_base, retry_cap, updated_at"

SELECT_QUEUE_SETTINGS = f"SELECT {QUEUE_SETTINGS_COLUMNS} FROM queue_settings WHERE queue = :queue"

SELECT_ALL_QUEUE_SETTINGS = f"SELECT {QUEUE_SETTINGS_COLUMNS} FROM queue_settings ORDER BY queue"

UPSERT_QUEUE_SETTINGS = """
INSERT INTO queue_settings (queue, lock_delay, lease_ttl, max_attempts, retry_base, retry_cap, updated_at)
VALUES (:queue, :lock_delay, :lease_ttl, :max_attempts, :retry_base, :retry_cap, :now)
ON CONFLICT (queue) DO UPDATE SET lock_delay = excluded.lock_delay, lease_ttl = excluded.lease_ttl,
    max_attempts = excluded.max_attempts, retry_base = excluded.retry_base,
    retry_cap = excluded.retry_cap, updated_at = excluded.updated_at
"""

# --- reads ----------------------------------------------------------------------------------
# ``CAST(:x AS TEXT) IS NULL`` makes a filter optional; the cast gives PostgreSQL
# a type for a NULL parameter.

SELECT_TASKS = f"""
SELECT {TASK_COLUMNS} FROM tasks
WHERE (CAST(:queue AS TEXT) IS NULL OR queue = :queue)
  AND (CAST(:status AS TEXT) IS NULL OR status = :status)
ORDER BY created_at, id LIMIT :limit
"""

COUNT_TASKS_BY_QUEUE_STATUS = (
    "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status ORDER BY queue, status"
)

SELECT_ACTIVE_LEASES = """
SELECT id, queue, owner, fencing_token, attempts, leased_at, lease_expires_at FROM tasks
WHERE status = 'leased' ORDER BY leased_at LIMIT :limit
"""

SELECT_EVENTS_AFTER = f"""
SELECT {EVENT_COLUMNS} FROM event_log
WHERE id > :after AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
ORDER BY id ASC LIMIT :limit
"""

SELECT_EVENTS_NEWEST = f"""
SELECT {EVENT_COLUMNS} FROM event_log
WHERE id > :after AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
ORDER BY id DESC LIMIT :limit
"""

SELECT_EVENT_PAGE = f"""
SELECT {EVENT_COLUMNS} FROM event_log
WHERE id > :after AND (CAST(:queue AS TEXT) IS NULL OR queue = :queue)
ORDER BY id LIMIT :limit
"""

SELECT_TASK_STATUS_PAGE = """
SELECT id, status, CASE WHEN result IS NULL THEN 0 ELSE 1 END FROM tasks
WHERE id > :after AND (CAST(:queue AS TEXT) IS NULL OR queue = :queue)
ORDER BY id LIMIT :limit
"""

COUNT_LOCK_OUTCOMES = """
SELECT outcome, COUNT(*) FROM lock_events
WHERE CAST(:queue AS TEXT) IS NULL OR queue = :queue GROUP BY outcome
"""

# --- the seven metrics ----------------------------------------------------------------------

METRIC_EVENT_KINDS = (EventKind.RETRY_SCHEDULED.value, EventKind.DEAD_LETTERED.value,
                      EventKind.TAKEN_OVER.value, EventKind.RECOVERED.value)
METRIC_LOCK_OUTCOMES = (LockOutcome.DUPLICATE.value, LockOutcome.BUSY.value, LockOutcome.CONFLICT.value,
                        LockOutcome.RECOVERED.value, LockOutcome.RECOVER_DEAD_LETTERED.value,
                        LockOutcome.RECOVER_FAILED.value)

COUNT_METRIC_EVENTS_SINCE = f"""
SELECT kind, reason, COUNT(*) FROM event_log
WHERE ts >= :since AND kind IN ({_in(METRIC_EVENT_KINDS)}) GROUP BY kind, reason
"""

COUNT_METRIC_LOCK_EVENTS_SINCE = f"""
SELECT outcome, COUNT(*) FROM lock_events
WHERE ts >= :since AND outcome IN ({_in(METRIC_LOCK_OUTCOMES)}) GROUP BY outcome
"""

COUNT_OPEN_DEAD_LETTERS = "SELECT COUNT(*) FROM dead_letters WHERE status = 'open'"

SELECT_EVENT_KINDS = "SELECT ts, kind, reason FROM event_log ORDER BY id"

SELECT_LOCK_OUTCOMES_SINCE = "SELECT ts, outcome FROM lock_events WHERE ts >= :since"

INSERT_ALERT = """
INSERT INTO alerts (ts, metric, value, threshold, window_minutes)
VALUES (:now, :metric, :value, :threshold, :window_minutes)
"""

# --- what the exporter serves beside the seven -------------------------------------------------

LEASES_BY_QUEUE = (
    "SELECT queue, COUNT(*), MIN(leased_at) FROM tasks WHERE status = 'leased' GROUP BY queue"
)

READY_PENDING_BY_QUEUE = """
SELECT queue, MIN(available_at) FROM tasks
WHERE status = 'pending' AND available_at <= :now GROUP BY queue
"""

# Totals over the append-only tables, counted once behind a watermark (see
# ``metrics.AppendOnlyCounter``): one pair of statements per grouping.
Grouping = Literal["event_kind", "event_transition", "lock_outcome"]

_GROUPINGS: dict[Grouping, tuple[str, str]] = {
    "event_kind": ("event_log", "kind"),
    "event_transition": ("event_log", "queue, from_status, to_status"),
    "lock_outcome": ("lock_events", "outcome"),
}

FIRST_UNSETTLED: dict[Grouping, str] = {
    name: f"SELECT MIN(id) FROM {table} WHERE id > :after AND ts > :cutoff"
    for name, (table, _group) in _GROUPINGS.items()
}

GROUPED_COUNTS: dict[Grouping, str] = {
    name: (f"SELECT {group}, COUNT(*), MAX(id) FROM {table} "
           f"WHERE id > :after AND id < :before GROUP BY {group}")
    for name, (table, group) in _GROUPINGS.items()
}

# Reading each row of an audit table once (see ``metrics.AuditTail``): the rows
# after the highest id read, the ids missing below it (a PostgreSQL transaction
# still open, or rolled back), those ids again later, and the seven's counts by
# time bucket. A bucket is ``floor(ts / :width)`` (the width a power of two, so
# bucket edges are exact in floating point); ``CAST`` truncates on SQLite and
# rounds on PostgreSQL, and the ``CASE`` makes both a floor.
AuditTable = Literal["event_log", "lock_events"]

# (totals grouping, the seven's key columns, the seven's row filter)
_AUDIT_TABLES: dict[AuditTable, tuple[str, str, str]] = {
    "event_log": ("kind, queue, from_status, to_status", "kind, reason",
                  f"kind IN ({_in(METRIC_EVENT_KINDS)})"),
    "lock_events": ("outcome", "outcome", f"outcome IN ({_in(METRIC_LOCK_OUTCOMES)})"),
}

_BUCKET = ("(CAST(ts / :width AS BIGINT) - "
           "CASE WHEN CAST(ts / :width AS BIGINT) > ts / :width THEN 1 ELSE 0 END)")

# How many id ranges one AUDIT_ROWS_IN statement asks for (unused: lo > hi).
AUDIT_RANGE_SLOTS = 16

AUDIT_TOP_ID: dict[AuditTable, str] = {
    table: f"SELECT id FROM {table} ORDER BY id DESC LIMIT 1" for table in _AUDIT_TABLES
}

# The rows with ``after < id <= upto`` by the totals grouping, then the bucket
# (NULL unless one of the seven's rows at or after :keep_from) and the seven's
# key. The seven's filter is in the CASE, not the WHERE clause: the id range is
# what gets read, never the window's rows through the (kind, ts) index.
def _tail(table: str, group: str, key: str, metric: str) -> str:
    columns = group.split(", ")
    grouped = ", ".join([*columns, str(len(columns) + 1), *(c for c in key.split(", ") if c not in columns)])
    return (f"SELECT {group}, CASE WHEN {metric} AND ts >= :keep_from THEN {_BUCKET} END, {key}, COUNT(*) "
            f"FROM {table} WHERE id > :after AND id <= :upto GROUP BY {grouped}")


AUDIT_TAIL: dict[AuditTable, str] = {
    table: _tail(table, group, key, metric) for table, (group, key, metric) in _AUDIT_TABLES.items()
}

# The ids missing from ``after < id <= upto``, as (last id before, next id
# present) pairs, where the next row is newer than :cutoff.
AUDIT_ID_GAPS: dict[AuditTable, str] = {
    table: (f"SELECT COALESCE(prev_id, :after), id FROM ("
            f"SELECT id, ts, LAG(id) OVER (ORDER BY id) AS prev_id FROM {table} "
            f"WHERE id > :after AND id <= :upto) AS tail "
            f"WHERE id > COALESCE(prev_id, :after) + 1 AND ts > :cutoff")
    for table in _AUDIT_TABLES
}

# Row by row, the rows with ids in the given ranges: id, the totals grouping,
# then the bucket (NULL unless one of the seven's rows at or after :keep_from)
# and the seven's key.
AUDIT_ROWS_IN: dict[AuditTable, str] = {
    table: (f"SELECT id, {group}, CASE WHEN {metric} AND ts >= :keep_from THEN {_BUCKET} END, {key} "
            f"FROM {table} WHERE "
            + " OR ".join(f"id BETWEEN :lo{i} AND :hi{i}" for i in range(AUDIT_RANGE_SLOTS)))
    for table, (group, key, metric) in _AUDIT_TABLES.items()
}

# The seven's rows with ``since <= ts < until`` by bucket and key, through the
# (kind, ts) and (outcome, ts) indexes: the window's partial bucket, or every
# bucket when the window is counted afresh.
AUDIT_WINDOW_BUCKETS: dict[AuditTable, str] = {
    table: (f"SELECT {_BUCKET}, {key}, COUNT(*) FROM {table} "
            f"WHERE {metric} AND ts >= :since AND ts < :until GROUP BY 1, {key}")
    for table, (_group, key, metric) in _AUDIT_TABLES.items()
}

# --- schema ------------------------------------------------------------------------------------

# The store's time (SQLite): the highest clock any writer has written with.
SELECT_CLOCK_HIGH_WATER = "SELECT value FROM leasestore_meta WHERE key = 'clock_high_water'"
SET_CLOCK_HIGH_WATER = """
INSERT INTO leasestore_meta (key, value) VALUES ('clock_high_water', :now)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

# Upgrades of a store made by an older version, by the version they lead to.
# New tables and their indexes come from the models (``create_all``).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN result TEXT",
        "DROP INDEX IF EXISTS ix_tasks_pending",
    ),
    3: (
        "ALTER TABLE tasks ADD COLUMN lock_delay DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN held_for VARCHAR(256)",
    ),
}

SELECT_SCHEMA_VERSION = "SELECT value FROM leasestore_meta WHERE key = 'schema_version'"
INSERT_SCHEMA_VERSION = "INSERT INTO leasestore_meta (key, value) VALUES ('schema_version', :v)"
UPDATE_SCHEMA_VERSION = "UPDATE leasestore_meta SET value = :v WHERE key = 'schema_version'"
