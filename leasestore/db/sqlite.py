"""SQLite: WAL, ``BEGIN IMMEDIATE`` write transactions, a fair write gate.

Why a gate: SQLite's own busy handler sleeps in growing steps (up to 100 ms),
so under several writer processes one of them can be starved for seconds.
Writers first take an ``flock`` on a file beside the database, polling with a
short backoff (0.5 ms up to 2 ms); the kernel releases it when a holder dies, even by
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
from contextlib import AbstractContextManager, nullcontext

from .. import errors
from ..states import LockOutcome, TaskStatus
from . import audit, process
from . import queries as q
from .driver import (
    COMMIT,
    ClaimNextKind,
    ClaimNextRow,
    ClaimParams,
    Clock,
    Driver,
    ExtendParams,
    Fetch,
    ReleaseParams,
    Step,
    Stmt,
)
from .rows import ExtendRow, LeaseRow, PendingRow, ReleaseRow

MIN_SQLITE_VERSION = (3, 35, 0)  # RETURNING

# A waiter for the gate looks again after 0.5 ms, then backs off to 2 ms: a
# fixed 0.5 ms poll kept three waiters on two cores busy enough to slow the
# holder (4 processes: 0.61 of raw SQL against 0.68-0.72 with the backoff,
# slowest worker still above 0.7 of the fastest; benchmarks/store_vs_raw.py).
_GATE_POLL_FIRST = 0.0005
_GATE_POLL_CAP = 0.002
_LOCK_NOW = fcntl.LOCK_EX | fcntl.LOCK_NB
# The store's time is raised at most this often (a write), read on every write.
CLOCK_HIGH_WATER_STEP = 1.0

# Enum members of the claim and release paths, read once (see leasestore.states).
_PENDING, _ACQUIRED, _ONE = TaskStatus.PENDING, LockOutcome.ACQUIRED, Fetch.ONE
_NEXT_ACQUIRED = ClaimNextKind.ACQUIRED

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
        if self._fd is None or self._pid != process.current:
            self._fd = self._open()
            self._pid = process.current
        return self._fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise errors.StoreUnavailable(f"cannot open the write lock {self.path}: {exc.strerror}") from exc
            refused = exc
        # flock needs no write access: a store we may not write still reaches
        # SQLite, which then says it is read-only.
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            # A missing lock file we may not create: say why it cannot be created.
            reason = refused.strerror if exc.errno == errno.ENOENT else exc.strerror
            raise errors.StoreReadOnly(f"database is read-only: cannot open the write lock {self.path}: "
                                       f"{reason}") from exc

    def hold(self) -> WriteGate:
        """``with gate.hold():`` holds the gate (the gate is its own context manager)."""
        return self

    def __enter__(self) -> None:
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise errors.StoreBusy()
        try:
            fd = self._fd
            if fd is None or self._pid != process.current:
                fd = self._descriptor()
            try:
                fcntl.flock(fd, _LOCK_NOW)
            except BlockingIOError:
                self._wait(fd, time.monotonic() + self.timeout)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    @staticmethod
    def _wait(fd: int, deadline: float) -> None:
        pause = _GATE_POLL_FIRST
        while True:
            if time.monotonic() >= deadline:
                raise errors.StoreBusy() from None
            time.sleep(pause)
            pause = min(pause * 2, _GATE_POLL_CAP)
            try:
                fcntl.flock(fd, _LOCK_NOW)
                return
            except BlockingIOError:
                pass

    def close(self) -> None:
        """Close the lock file (a read-only remount needs no file open for writing)."""
        if self._fd is not None and self._pid == process.current:
            os.close(self._fd)
        self._fd = None


class SqliteDriver(Driver):
    """One writer at a time: each write is a short ``BEGIN IMMEDIATE`` transaction
    behind the :class:`WriteGate`, so nothing needs row locks."""

    name = "sqlite"
    named_params = True
    begin_write_sql = "BEGIN IMMEDIATE"  # the write lock up front: no SQLITE_BUSY_SNAPSHOT later
    begin_read_sql = "BEGIN"

    def __init__(self, clock: Clock, gate: WriteGate | None) -> None:
        super().__init__(clock)
        self.gate = gate
        self._high_water = self.stmt(q.SELECT_CLOCK_HIGH_WATER, fetch=Fetch.ONE)

    def write_gate(self) -> AbstractContextManager[None]:
        return self.gate if self.gate is not None else nullcontext()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()

    def _clock_now(self) -> float:
        # No server: every process on the host shares this clock, and WAL does
        # not work across hosts anyway.
        frozen = self.clock.frozen
        return frozen if frozen is not None else time.time() + self.clock.offset

    def now(self) -> Step[float]:
        return self._clock_now()
        yield  # pragma: no cover - makes this a step that yields nothing

    def write_now(self) -> Step[float]:
        """The clock, checked against the store's time: every process reads its
        own clock here, so one that runs behind (a step back, a faked clock) would
        recover live leases and hide retries from the others. Its writes are
        refused, and the refusal is recorded, once the lag passes the tolerance.
        The high-water mark moves in steps of ``CLOCK_HIGH_WATER_STEP`` so that
        most writes only read it."""
        frozen = self.clock.frozen  # _clock_now, inlined: every write comes here
        now = frozen if frozen is not None else time.time() + self.clock.offset
        tolerance = self.clock.tolerance
        if tolerance is None:
            return now
        row = yield self._high_water
        high = float(row[0]) if row is not None else None
        if high is not None and now < high - tolerance:
            yield from self.insert_lock_event(high, audit.clock_behind(now, high))
            yield COMMIT
            raise errors.ClockBehind(high - now, tolerance)
        if high is None or now >= high + CLOCK_HIGH_WATER_STEP:
            yield from self.run(q.SET_CLOCK_HIGH_WATER, {"now": repr(now)})
        return now

    def clock_high_water(self) -> Step[float | None]:
        row = yield self._high_water
        return float(row[0]) if row is not None else None

    def set_clock_high_water(self, now: float) -> Step[None]:
        yield Stmt(q.SET_CLOCK_HIGH_WATER, {"now": repr(now)})

    def claim_next(self, p: ClaimParams) -> Step[ClaimNextRow]:
        yield self._begin_write
        now = yield from self.write_now()
        if p.resume:
            own = yield from self.own_lease(p.owner, p.queue, now)
            if own is not None:
                yield COMMIT
                return ClaimNextRow(ClaimNextKind.MINE, task_id=own)
        row = yield Stmt(q.SELECT_NEXT_PENDING, {"queue": p.queue, "owner": p.owner, "now": now, "limit": 1},
                         _ONE)
        pending = PendingRow.from_row(row) if row is not None else None
        if pending is None:
            expired = yield from self.expired_candidate(p.queue, p.owner, now)
            if expired is not None:
                yield COMMIT
                return ClaimNextRow(ClaimNextKind.EXPIRED, task_id=expired.task_id)
            held = yield from self.held_back(p.queue, p.owner, now)
            if held is None:
                yield COMMIT
                return ClaimNextRow(ClaimNextKind.NONE)
            yield Stmt(q.INSERT_LOCK_EVENT, audit.lock_delayed(held, p.queue, p.owner).params(now))
            yield COMMIT
            return ClaimNextRow(ClaimNextKind.HELD, task_id=held.task_id)
        row = yield Stmt(q.ACQUIRE, {"now": now, "id": pending.task_id, "fence": pending.fencing_token,
                                     "from_status": _PENDING, "owner": p.owner,
                                     "token_hash": p.token_hash, "ttl": p.ttl}, _ONE)
        assert row is not None, "the write lock is held: the row cannot change"
        lease = LeaseRow.from_row(row)
        yield Stmt(q.INSERT_EVENT, audit.claimed(lease, _PENDING).params(now))
        yield Stmt(q.INSERT_LOCK_EVENT, audit.claim_outcome(lease, _ACQUIRED).params(now))
        yield COMMIT
        return ClaimNextRow(_NEXT_ACQUIRED, lease, lease.task_id)

    def claim_many(self, p: ClaimParams, token_hashes: Sequence[str]) -> Step[list[tuple[int, LeaseRow]]]:
        yield self._begin_write
        now = yield from self.write_now()
        rows = yield Stmt(q.SELECT_NEXT_PENDING, {"queue": p.queue, "owner": p.owner, "now": now,
                                                  "limit": len(token_hashes)}, Fetch.ALL)
        leased: list[tuple[int, LeaseRow]] = []
        for n, (task_id, fence) in enumerate(rows):
            row = yield Stmt(q.ACQUIRE, {"now": now, "id": task_id, "fence": fence,
                                         "from_status": _PENDING, "owner": p.owner,
                                         "token_hash": token_hashes[n], "ttl": p.ttl}, _ONE)
            assert row is not None, "the write lock is held: the row cannot change"
            lease = LeaseRow.from_row(row)
            yield Stmt(q.INSERT_EVENT, audit.claimed(lease, _PENDING).params(now))
            yield Stmt(q.INSERT_LOCK_EVENT, audit.claim_outcome(lease, _ACQUIRED).params(now))
            leased.append((n, lease))
        yield COMMIT
        return leased

    def extend(self, p: ExtendParams) -> Step[ExtendRow | None]:
        yield self._begin_write
        now = yield from self.write_now()
        row = yield Stmt(q.EXTEND, {"now": now, "id": p.task_id, "token_hash": p.token_hash,
                                         "fence": p.fence, "ttl": p.ttl, "checkpoint": p.checkpoint,
                                         "checkpointing": p.checkpointing}, _ONE)
        if row is None:
            yield COMMIT
            return None
        extended = ExtendRow.from_row(row)
        yield Stmt(q.INSERT_LOCK_EVENT, audit.extended(p.task_id, extended).params(now))
        if p.checkpointing:
            yield Stmt(q.INSERT_EVENT, audit.checkpointed(p.task_id, extended).params(now))
        yield COMMIT
        return extended

    def release(self, p: ReleaseParams) -> Step[ReleaseRow | None]:
        yield self._begin_write
        now = yield from self.write_now()
        row = yield Stmt(q.RELEASE, {"now": now, "id": p.task_id, "token_hash": p.token_hash,
                                          "fence": p.fence, "to_status": p.to_status, "delay": p.delay,
                                          "error": p.error, "result": p.result}, _ONE)
        if row is None:
            yield COMMIT
            return None
        released = ReleaseRow.from_row(row)
        if p.dead_letter_reason is not None:
            dead_letter_id = yield from self.insert_dead_letter(now, p.task_id, released.queue,
                                                                p.dead_letter_reason, p.attempt, p.error)
            released = released._replace(dead_letter_id=dead_letter_id)
        yield Stmt(q.INSERT_EVENT, audit.released(p, released).params(now))
        yield Stmt(q.INSERT_LOCK_EVENT, audit.release_outcome(p, released).params(now))
        yield COMMIT
        return released

    def schema_extras(self) -> list[str]:
        return list(APPEND_ONLY_TRIGGERS)

    def translate_error(self, exc: BaseException) -> errors.LeaseStoreError | None:
        if isinstance(exc, errors.LeaseStoreError):
            # Typed where the cause was known (opening a read-only store, a
            # read-only connection refusing BEGIN IMMEDIATE): kept as it is, a
            # copy so that the caller can chain it to the original.
            import copy

            return copy.copy(exc)
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
            return errors.DuplicateKey(f"duplicate key: {exc}")
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
