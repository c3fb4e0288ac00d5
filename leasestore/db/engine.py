"""Opening a store's database, and the blocking runner that drives steps.

The hot path sends prepared SQL text on a pooled DB-API connection: the
operations are a handful of short statements, and building ORM objects for
them would cost several times the statements themselves. SQLAlchemy still owns
URLs, pooling, reconnection and DDL; SQLModel owns the table definitions.
This is the only module that reads a URL's scheme.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .. import errors
from . import process
from .driver import Clock, Driver, Fetch, Step, Stmt, Tx
from .sqlite import SqliteDriver, WriteGate, check_version, configure_connection

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0
# Connections each store's pool keeps open, and how many more it may open at once.
POOL_SIZE = 4
POOL_OVERFLOW = 8
# A connection dropped mid-operation is retried this many times; every
# operation is safe to repeat (a repeated claim resumes, see claim_task).
DISCONNECT_RETRIES = 2

Op = Callable[[], Step[T]]
"""Makes a fresh step each call, so an operation can be retried whole."""


def fetch(cur: Any, how: Fetch) -> Any:
    if how is Fetch.ONE:
        return cur.fetchone()
    if how is Fetch.ALL:
        return cur.fetchall()
    if how is Fetch.ROWCOUNT:
        return cur.rowcount
    return None


class StepRun:
    """The bookkeeping of driving one step, shared by the blocking and the
    asyncio runner: transaction state, the write gate, error translation.

    The runners call :meth:`before` and :meth:`after` only for statements that
    begin or end a transaction (``stmt.tx``): the hot loop stays a few lines."""

    __slots__ = ("driver", "step", "in_transaction", "disconnected", "gate", "gate_held")

    def __init__(self, driver: Driver, step: Step[Any]) -> None:
        self.driver = driver
        self.step = step
        self.in_transaction = False
        self.disconnected = False
        # Looked up once per operation, not per transaction: the SQLite claim
        # path spends a measurable share of its time on calls like these.
        self.gate = driver.write_gate()
        self.gate_held = False

    def before(self, stmt: Stmt) -> None:
        if stmt.tx is Tx.BEGIN_WRITE:
            self.gate.__enter__()
            self.gate_held = True

    def after(self, stmt: Stmt) -> None:
        if stmt.tx is Tx.END:
            self.in_transaction = False
            self._open_gate()
        else:
            self.in_transaction = True

    def _open_gate(self) -> None:
        if self.gate_held:
            self.gate_held = False
            self.gate.__exit__(None, None, None)

    def failed(self, stmt: Stmt, exc: Exception) -> errors.LeaseStoreError:
        """The typed error to throw into the step (or raise, if untranslatable)."""
        if stmt.tx is Tx.BEGIN_WRITE:
            self._open_gate()
        typed = self.driver.translate_error(exc)
        if typed is None:
            raise exc
        if self.driver.is_disconnect(exc):
            self.disconnected = True
            self.in_transaction = False
        typed.__cause__ = exc
        return typed

    def close(self) -> None:
        self._open_gate()
        self.step.close()


_NO_TX, _BEGIN_WRITE, _END = Tx.NONE, Tx.BEGIN_WRITE, Tx.END
_ONE, _ALL, _ROWCOUNT = Fetch.ONE, Fetch.ALL, Fetch.ROWCOUNT


def drive(run: StepRun, cur: Any) -> Any:
    """Run ``run.step`` on a blocking DB-API cursor."""
    step = run.step
    send = step.send
    execute = cur.execute
    try:
        stmt = next(step)
        while True:
            sql, params, how, tx = stmt  # one unpacking, not four attribute lookups
            if tx is _BEGIN_WRITE:  # StepRun.before, inlined: this loop is the hot path
                run.gate.__enter__()
                run.gate_held = True
            try:
                execute(sql, params)
                if how is _ONE:
                    result = cur.fetchone()
                elif how is _ALL:
                    result = cur.fetchall()
                elif how is _ROWCOUNT:
                    result = cur.rowcount
                else:
                    result = None
            except Exception as exc:
                stmt = step.throw(run.failed(stmt, exc))
                continue
            if tx is not _NO_TX:  # StepRun.after, inlined
                if tx is _END:
                    run.in_transaction = False
                    if run.gate_held:
                        run.gate_held = False
                        run.gate.__exit__(None, None, None)
                else:
                    run.in_transaction = True
            stmt = send(result)
    except StopIteration as stop:
        return stop.value
    except BaseException:
        if run.in_transaction:
            _rollback_quietly(cur)
        raise
    finally:
        run.close()


def _rollback_quietly(cur: Any) -> None:
    try:
        cur.execute("ROLLBACK")
    except Exception:
        # Nothing left to roll back: the driver or the server already ended it.
        pass


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreachable(driver: Driver, exc: Exception, doing: str) -> errors.LeaseStoreError:
    """The typed error for a failure to reach the database (connecting,
    listening): the driver's own reading of it, else ``StoreUnavailable``."""
    return driver.translate_error(exc) or errors.StoreUnavailable(f"cannot {doing}: {first_line(exc)}")


class ReadyWaiter(Protocol):
    notified: bool  # whether the server wakes the waiter (else it only sleeps)

    def wait(self, queue: str, timeout: float) -> bool: ...

    def close(self) -> None: ...


class Sleeper:
    """Waits by sleeping: where nothing can wake a waiting claim (SQLite)."""

    notified = False

    def wait(self, queue: str, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def close(self) -> None:
        pass


class HeldConnection:
    """A pooled DB-API connection kept checked out between operations, with its cursor."""

    __slots__ = ("fairy", "cursor", "pid", "keep")

    def __init__(self, fairy: Any, keep: bool = True) -> None:
        self.fairy = fairy
        # One cursor per connection, kept with it: making one per operation
        # costs more than some of the statements.
        self.cursor = fairy.cursor()
        self.pid = process.current
        self.keep = keep  # whether it may wait in IdleConnections between operations

    def close(self) -> None:
        try:
            self.fairy.close()
        except Exception:
            # Returning a broken connection to the pool fails; the pool discards it.
            pass

    def invalidate(self) -> None:
        try:
            self.fairy.invalidate()
        except Exception:
            pass


# Connections a forked child found in its parent's stack: never used, and
# never closed by the child either (closing a PostgreSQL connection would end
# the parent's session on the shared socket).
_INHERITED: list[HeldConnection] = []


class IdleConnections:
    """Up to ``limit`` connections kept checked out of SQLAlchemy's pool between
    operations, the most recently used first.

    A checkout from the pool and back costs about 4 µs per operation (on
    SQLite a tenth of a claim); popping a connection off this stack costs
    nothing. The pool still opens, counts and bounds every connection; this
    stack only skips its per-operation bookkeeping. A connection that must be
    checked at every use (``keeps`` says no: a read-only SQLite store's) goes
    back to the pool each time."""

    def __init__(self, limit: int, keeps: Callable[[Any], bool] | None = None) -> None:
        self.limit = limit
        self.keeps = keeps
        self._idle: list[HeldConnection] = []
        self._pid = process.current

    def hold(self, fairy: Any) -> HeldConnection:
        """A connection just checked out of the pool, to be given back here.
        Whether it may be kept is known from its opening (a read-only store's
        connections are marked then), so it is asked once, not at every return."""
        return HeldConnection(fairy, self.keeps is None or self.keeps(fairy))

    def take(self) -> HeldConnection | None:
        if self._pid != process.current:
            _INHERITED.extend(self._idle)
            self._idle = []
            self._pid = process.current
        try:
            return self._idle.pop()  # atomic under the GIL: no lock needed
        except IndexError:
            return None

    def give_back(self, held: HeldConnection) -> None:
        if held.keep and len(self._idle) < self.limit and held.pid == process.current:
            self._idle.append(held)
        else:
            held.close()

    def close_all(self) -> None:
        idle, self._idle = self._idle, []
        if self._pid == process.current:
            for held in idle:
                held.close()
        else:
            _INHERITED.extend(idle)


@dataclass
class Database:
    """A store's database for blocking callers: a pool and the runner of steps."""

    engine: Engine
    driver: Driver
    url: URL
    idle: IdleConnections = field(default_factory=lambda: IdleConnections(POOL_SIZE))

    def run(self, op: Op[T], *, retries: int = DISCONNECT_RETRIES) -> T:
        """Run the step ``op()`` makes; a dropped connection runs a fresh one."""
        tries = 0
        idle = self.idle
        # Only a lost connection is retried; busy, read-only and full are the
        # caller's to handle (they are typed subclasses).
        while True:
            run = StepRun(self.driver, op())
            held = idle.take()
            try:
                if held is None:
                    held = idle.hold(self._checkout())
                result: T = drive(run, held.cursor)
            except errors.StoreUnavailable as exc:
                self._after_failure(run, held)
                if tries >= retries or type(exc) is not errors.StoreUnavailable:
                    raise
                tries += 1
                continue
            except BaseException:
                self._after_failure(run, held)
                raise
            idle.give_back(held)
            return result

    def _after_failure(self, run: StepRun, held: HeldConnection | None) -> None:
        if held is None:  # no connection to be had: the step never ran
            run.close()
        elif run.disconnected:
            # Never hand a dead connection to the next caller.
            held.invalidate()
            held.close()
        else:
            self.idle.give_back(held)

    def run_in_transaction(self, connection: Any, op: Op[T]) -> T:
        """Run the step ``op()`` inside the caller's transaction on ``connection``
        (:mod:`leasestore.db.caller`); never retried, never committed here."""
        from . import caller  # psycopg, loaded only when a caller's connection is passed

        raw = caller.blocking_connection(self.driver, self.url, connection)
        run = StepRun(self.driver, caller.in_caller_transaction(op()))
        with raw.cursor() as cur:
            result: T = drive(run, cur)
        return result

    def write(self, body: Callable[[float], Step[T]], *, retries: int = DISCONNECT_RETRIES) -> T:
        """``body(now)`` in one write transaction."""
        return self.run(lambda: self.driver.write(body), retries=retries)

    def read(self, body: Callable[[float], Step[T]], *, retries: int = DISCONNECT_RETRIES) -> T:
        """``body(now)`` in one read snapshot (repeatable, so retried like writes)."""
        return self.run(lambda: self.driver.read(body), retries=retries)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """One ``:name``-style statement in its own transaction, its rows returned
        (for tests and tools that inspect the tables; the store never uses it)."""
        return self.run(lambda: committed_query(self.driver, sql, params))

    def _checkout(self) -> Any:
        """A pooled DB-API connection; the caller closes it (back to the pool)."""
        try:
            return self.engine.raw_connection()
        except Exception as exc:
            raise unreachable(self.driver, exc, "connect to the database") from exc

    def ready_listener(self) -> ReadyWaiter:
        """What a claim waits on between looks: woken by the server where it can
        notify (PostgreSQL LISTEN), else a plain sleep. The caller closes it."""
        if isinstance(self.driver, SqliteDriver):
            return Sleeper()
        from .postgresql import ReadyListener

        try:
            return ReadyListener(self.url)
        except Exception as exc:
            raise unreachable(self.driver, exc, "connect to the database") from exc

    def dispose(self) -> None:
        self.idle.close_all()
        self.driver.close()
        self.engine.dispose()


def committed_query(driver: Driver, sql: str, params: Mapping[str, Any] | None) -> Step[list[Sequence[Any]]]:
    yield from driver.begin_write()
    rows: list[Sequence[Any]] | None = yield driver.stmt(sql, params, Fetch.ALL)
    yield from driver.commit()
    return list(rows or [])


def open_database(
    url: URL,
    *,
    clock: Clock | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    fair_writes: bool = True,
    create_directories: bool = True,
) -> Database:
    backend = url.get_backend_name()
    if backend == "sqlite":
        import errno
        import sqlite3

        from sqlalchemy.exc import DisconnectionError

        check_version()
        path = Path(url.database or "")
        try:
            is_folder = path.is_dir()
        except OSError as exc:  # e.g. a folder on the way this user may not enter
            raise errors.ConfigurationError(f"cannot open the database {path}: {exc.strerror or exc}") from exc
        if is_folder:
            raise errors.ConfigurationError(f"{path} is a folder, not a SQLite database file")
        if create_directories:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = f"{exc.filename} is not a folder" if exc.errno == errno.EEXIST else exc.strerror or str(exc)
                reason = f"cannot create the folder {path.parent} for the database {path}: {why}"
                if exc.errno == errno.EROFS:
                    raise errors.StoreReadOnly(f"database is read-only: {reason}") from exc
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise errors.StoreFull(f"database is full: {reason}") from exc
                raise errors.ConfigurationError(reason) from exc
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            # Every step ends its own transaction: nothing to reset on return.
            pool_reset_on_return=None,
        )
        busy_ms = int(busy_timeout * 1000)
        wal = Path(f"{path}-wal")
        read_only_key = "leasestore_read_only"  # in a connection's info: it was opened read-only

        # A store this process cannot write (read-only filesystem, or no write
        # permission on its folder or file) is opened for reading only. SQLite
        # reads a WAL database there only if its -wal and -shm files exist (a
        # writer elsewhere has it open) or when told the file is immutable; an
        # immutable reader ignores any -wal file, so it is used only when there
        # is none, and dropped at checkout as soon as the file or its -wal
        # changes. Its connections refuse BEGIN IMMEDIATE, so every write,
        # even one that would change nothing, fails with StoreReadOnly.
        def why_read_only() -> str | None:
            folder = path.parent
            if not folder.is_dir():
                return None  # SQLite says what is wrong
            if os.access(folder, os.W_OK) and (not path.exists() or os.access(path, os.W_OK)):
                return None
            try:
                if os.statvfs(folder).f_flag & os.ST_RDONLY:
                    return "read-only file system"
            except OSError:
                pass
            return "no write permission"

        def stamp() -> tuple[bool, int, int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return wal.exists(), st.st_ino, st.st_size, st.st_mtime_ns

        def read_only_connection(why: str) -> type[sqlite3.Connection]:
            refusal = f"database is read-only: {path} ({why})"

            class ReadOnlyCursor(sqlite3.Cursor):
                def execute(self, sql: str, parameters: Any = (), /) -> Any:
                    if sql.lstrip()[:15].upper() == "BEGIN IMMEDIATE":
                        raise errors.StoreReadOnly(refusal)
                    return super().execute(sql, parameters)

            class ReadOnlyConnection(sqlite3.Connection):
                def cursor(self, factory: Any = None) -> Any:
                    return super().cursor(factory or ReadOnlyCursor)

            return ReadOnlyConnection

        def connect(cargs: Sequence[Any], cparams: Mapping[str, Any]) -> sqlite3.Connection:
            conn: sqlite3.Connection = sqlite3.connect(*cargs, **cparams)
            try:
                configure_connection(conn, busy_ms)  # the first statement: where an unreadable store fails
            except BaseException:
                conn.close()
                raise
            return conn

        @event.listens_for(engine, "do_connect")
        def _do_connect(_dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            record.info.pop(read_only_key, None)
            why = why_read_only()
            if why is None:
                try:
                    return connect(cargs, cparams)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != 14:  # SQLITE_CANTOPEN
                        raise
                    raise errors.StoreUnavailable(f"cannot open the database {path}: {exc}") from exc
            params = {**cparams, "factory": read_only_connection(why)}
            pinned = None
            try:
                conn = connect(cargs, params)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (8, 14):  # SQLITE_READONLY, SQLITE_CANTOPEN
                    raise
                if not path.exists():
                    raise errors.StoreReadOnly(f"database is read-only: cannot create {path} ({why})") from exc
                if wal.exists() or params.get("uri"):
                    raise errors.StoreReadOnly(
                        f"database is read-only: cannot read {path} ({why}): {exc}") from exc
                pinned = stamp()
                params.update(uri=True)
                immutable = Path(os.path.abspath(path)).as_uri() + "?mode=ro&immutable=1"
                try:
                    conn = connect([immutable, *cargs[1:]], params)
                except sqlite3.Error as exc2:
                    raise errors.StoreReadOnly(
                        f"database is read-only: cannot read {path} ({why}): {exc2}") from exc2
            record.info[read_only_key] = pinned
            if not event.contains(engine, "checkout", _on_checkout):
                # Only a store that has had a read-only connection pays for the check.
                event.listen(engine, "checkout", _on_checkout)
            return conn

        def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
            if read_only_key not in record.info:
                return
            if why_read_only() is None:
                raise DisconnectionError(f"{path} is writable again")  # the pool reopens it read-write
            pinned = record.info[read_only_key]
            if pinned is not None and pinned != stamp():
                # A writer appeared (or wrote) through another path: reopen.
                raise DisconnectionError(f"{path} changed under an immutable reader")

        gate = WriteGate(str(path) + ".lock", busy_timeout) if fair_writes else None
        idle = IdleConnections(POOL_SIZE, keeps=lambda conn: read_only_key not in conn.info)
        return Database(engine, SqliteDriver(clock or Clock(), gate), url, idle)

    if backend == "postgresql":
        # psycopg is loaded here, not with this module: a SQLite store never needs it.
        from .postgresql import PostgresDriver, connect_kwargs

        _conninfo, kwargs = connect_kwargs(url)
        engine = create_engine(
            url.difference_update_query(["options"]),
            isolation_level="AUTOCOMMIT",
            connect_args=kwargs,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            # Every step ends its own transaction: nothing to reset on return.
            pool_reset_on_return=None,
        )
        return Database(engine, PostgresDriver(clock or Clock()), url)

    raise errors.ConfigurationError(f"unsupported database {backend!r}")


def sqlite_file_missing(url: URL) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (reading it must
    not leave an empty file behind); :class:`ConfigurationError` when that
    cannot be known (a folder on the way this user may not enter)."""
    if url.get_backend_name() != "sqlite":
        return False
    path = Path(url.database or "")
    try:
        return not path.exists()
    except OSError as exc:
        raise errors.ConfigurationError(f"cannot open the database {path}: {exc.strerror or exc}") from exc
