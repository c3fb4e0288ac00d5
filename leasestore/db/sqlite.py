"""SQLite: WAL, ``BEGIN IMMEDIATE`` write transactions, a fair write gate.

Why a gate: SQLite's own busy handler sleeps in growing steps (up to 100 ms),
so under several writer processes one of them can be starved for seconds.
Writers first take an ``flock`` on a file beside the database, polling at a
short fixed interval; the kernel releases it when a holder dies, even by
SIGKILL. ``BEGIN IMMEDIATE`` then takes SQLite's write lock up front, so a
transaction never fails half-way with ``SQLITE_BUSY_SNAPSHOT``.

There is no server clock: "the database's clock" is this host's clock, which
every process on the host shares (WAL does not work across hosts anyway).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Iterator

from .. import errors
from .dialect import Clock, Dialect

MIN_SQLITE_VERSION = (3, 35, 0)  # RETURNING

_GATE_POLL_SECONDS = 0.0005

SELECT_NEXT_PENDING = """
SELECT id, fencing_token FROM tasks
WHERE queue = :queue AND status = 'pending' AND available_at <= :now
ORDER BY available_at, created_at LIMIT 1
"""

SELECT_EXPIRED_CANDIDATE = """
SELECT id, owner, fencing_token, lease_expires_at FROM tasks
WHERE queue = :queue AND status = 'leased' AND lease_expires_at <= :now
  AND attempts < max_attempts
ORDER BY lease_expires_at LIMIT 1
"""

SELECT_EXPIRED_BATCH = """
SELECT id, queue, owner, fencing_token, attempts, max_attempts, lease_expires_at FROM tasks
WHERE status = 'leased' AND lease_expires_at <= :now
ORDER BY lease_expires_at LIMIT :limit
"""

APPEND_ONLY_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS event_log_no_update BEFORE UPDATE ON event_log
       BEGIN SELECT RAISE(ABORT, 'event_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS event_log_no_delete BEFORE DELETE ON event_log
       BEGIN SELECT RAISE(ABORT, 'event_log is append-only'); END""",
]


class WriteGate:
    """Process-fair exclusive lock around write transactions (see module doc)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        # A descriptor inherited across fork() would share the lock with the
        # parent; each process opens its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = self._open()
            self._pid = os.getpid()
        return self._fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise errors.StoreUnavailable(f"cannot open the write lock {self.path}: {exc.strerror}") from exc
        # flock needs no write access: a store we may not write still reaches
        # SQLite, which then says it is read-only.
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise errors.StoreReadOnly(f"database is read-only: cannot open the write lock {self.path}: "
                                       f"{exc.strerror}") from exc

    @contextmanager
    def hold(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise errors.StoreBusy()
        try:
            fd = self._descriptor()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise errors.StoreBusy() from None
                    time.sleep(_GATE_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class SqliteDialect(Dialect):
    name = "sqlite"
    paramstyle_named = True
    begin_write = "BEGIN IMMEDIATE"  # take the write lock up front: no SQLITE_BUSY_SNAPSHOT later
    begin_read = "BEGIN"
    driver_error = sqlite3.Error

    def __init__(self, clock: Clock, gate: WriteGate | None) -> None:
        super().__init__(clock)
        self.gate = gate

    @contextmanager
    def write_transaction(self, conn: Any) -> Iterator[Any]:
        if self.gate is None:
            with super().write_transaction(conn) as cur:
                yield cur
            return
        with self.gate.hold(), super().write_transaction(conn) as cur:
            yield cur

    def now(self, cur: Any) -> float:
        return time.time() + self.clock.offset

    def select_next_pending(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        return self.fetchone(cur, SELECT_NEXT_PENDING, {"queue": queue, "now": now})

    def select_expired_candidate(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        return self.fetchone(cur, SELECT_EXPIRED_CANDIDATE, {"queue": queue, "now": now})

    def select_task_for_update(self, cur: Any, task_id: str) -> Sequence[Any] | None:
        # BEGIN IMMEDIATE already excludes every other writer.
        from .queries import SELECT_TASK

        return self.fetchone(cur, SELECT_TASK, {"id": task_id})

    def select_expired_batch(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        return self.fetchall(cur, SELECT_EXPIRED_BATCH, {"now": now, "limit": limit})

    def schema_extras(self) -> list[str]:
        return list(APPEND_ONLY_TRIGGERS)

    def translate_error(self, exc: BaseException) -> Exception | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        message = str(exc).lower()
        if "no such table" in message:
            return errors.SchemaNotInitialized()
        if "locked" in message or "busy" in message:
            return errors.StoreBusy()
        if "readonly" in message or "read-only" in message:
            return errors.StoreReadOnly(f"database is read-only: {exc}")
        if "full" in message:
            return errors.StoreFull(f"database is full: {exc}")
        if "append-only" in message:
            return errors.InvalidTransition("event_log is append-only")
        if isinstance(exc, sqlite3.IntegrityError):
            return None
        if isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError)):
            return errors.StoreUnavailable(f"SQLite error: {exc}")
        return None


def configure_connection(dbapi_connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Pragmas every connection needs; run on connect, before any transaction."""
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode and str(mode[0]).lower() != "wal":
        # A read-only file cannot switch modes; writes will fail with a clear error later.
        pass
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.close()


def check_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise errors.ConfigurationError(
            f"SQLite {sqlite3.sqlite_version} is too old: leasestore needs 3.35 or newer"
        )
