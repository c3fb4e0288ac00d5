"""Opening a store's database, and the blocking runner that drives steps.

The hot path sends prepared SQL text on a pooled DB-API connection: the
operations are a handful of short statements, and building ORM objects for
them would cost several times the statements themselves. SQLAlchemy still owns
URLs, pooling, reconnection and DDL; SQLModel owns the table definitions.
This is the only module that reads a URL's scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .. import errors
from .driver import Clock, Driver, Fetch, Step, Stmt, Tx
from .postgresql import PostgresDriver, connect_kwargs
from .sqlite import SqliteDriver, WriteGate, check_version, configure_connection

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0
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
    asyncio runner: transaction state, the write gate, error translation."""

    def __init__(self, driver: Driver, step: Step[Any]) -> None:
        self.driver = driver
        self.step = step
        self.in_transaction = False
        self.disconnected = False
        self._gate = ExitStack()

    def before(self, stmt: Stmt) -> None:
        if stmt.tx is Tx.BEGIN_WRITE:
            self._gate.enter_context(self.driver.write_gate())

    def after(self, stmt: Stmt) -> None:
        if stmt.tx is Tx.BEGIN_WRITE or stmt.tx is Tx.BEGIN_READ:
            self.in_transaction = True
        elif stmt.tx is Tx.END:
            self.in_transaction = False
            self._gate.close()

    def failed(self, stmt: Stmt, exc: Exception) -> errors.LeaseStoreError:
        """The typed error to throw into the step (or raise, if untranslatable)."""
        if stmt.tx is Tx.BEGIN_WRITE:
            self._gate.close()
        typed = self.driver.translate_error(exc)
        if typed is None:
            raise exc
        if self.driver.is_disconnect(exc):
            self.disconnected = True
            self.in_transaction = False
        typed.__cause__ = exc
        return typed

    def close(self) -> None:
        self._gate.close()
        self.step.close()


def drive(run: StepRun, conn: Any) -> Any:
    """Run ``run.step`` on a blocking DB-API connection."""
    step = run.step
    cur = conn.cursor()
    try:
        stmt = next(step)
        while True:
            run.before(stmt)
            try:
                cur.execute(stmt.sql, stmt.params)
                result = fetch(cur, stmt.fetch)
            except Exception as exc:
                stmt = step.throw(run.failed(stmt, exc))
                continue
            run.after(stmt)
            stmt = step.send(result)
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


def retrying(attempt: Callable[[], T], retries: int) -> T:
    # Only a lost connection is retried; busy, read-only and full are the
    # caller's to handle (they are typed subclasses).
    tries = 0
    while True:
        try:
            return attempt()
        except errors.StoreUnavailable as exc:
            if tries >= retries or type(exc) is not errors.StoreUnavailable:
                raise
            tries += 1


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Database:
    """A store's database for blocking callers: a pool and the runner of steps."""

    engine: Engine
    driver: Driver
    url: URL

    def run(self, op: Op[T], *, retries: int = DISCONNECT_RETRIES) -> T:
        """Run the step ``op()`` makes; a dropped connection runs a fresh one."""
        def attempt() -> T:
            run = StepRun(self.driver, op())
            with self._connection() as conn:
                try:
                    result: T = drive(run, conn)
                    return result
                finally:
                    if run.disconnected:
                        # Never hand a dead connection to the next caller.
                        conn.invalidate()

        return retrying(attempt, retries)

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

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            fairy = self.engine.raw_connection()
        except Exception as exc:
            typed = self.driver.translate_error(exc)
            raise (typed or errors.StoreUnavailable(f"cannot connect to the database: {first_line(exc)}")) from exc
        try:
            yield fairy
        finally:
            try:
                fairy.close()
            except Exception:
                # Returning a broken connection to the pool fails; the pool discards it.
                pass

    def dispose(self) -> None:
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
        check_version()
        path = Path(url.database or "")
        if create_directories:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            pool_size=4,
            max_overflow=8,
        )
        busy_ms = int(busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            configure_connection(dbapi_connection, busy_ms)

        gate = WriteGate(str(path) + ".lock", busy_timeout) if fair_writes else None
        return Database(engine, SqliteDriver(clock or Clock(), gate), url)

    if backend == "postgresql":
        _conninfo, kwargs = connect_kwargs(url)
        engine = create_engine(
            url.difference_update_query(["options"]),
            isolation_level="AUTOCOMMIT",
            connect_args=kwargs,
            pool_size=4,
            max_overflow=8,
        )
        return Database(engine, PostgresDriver(clock or Clock()), url)

    raise errors.ConfigurationError(f"unsupported database {backend!r}")


def sqlite_file_missing(url: URL) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (reading it must
    not leave an empty file behind)."""
    return url.get_backend_name() == "sqlite" and not Path(url.database or "").exists()
