"""Running a step inside a transaction the caller owns (``connection=``).

An agent that writes its own rows on PostgreSQL can have a release, a
checkpoint or the enqueue of follow-up tasks commit or roll back with them: it
passes its connection (psycopg, or a SQLAlchemy ``Connection``; blocking or
asyncio) and the store runs its statements there, in a SAVEPOINT, never
``BEGIN``, ``COMMIT`` or ``ROLLBACK``. The fencing check is the statement's own
WHERE clause, so it is judged inside that transaction, and the row lock it
takes is held until the caller commits: a takeover waits for the commit and
then sees the task finished. What a step would have run as its own
transactions runs as nested savepoints.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import URL
from sqlalchemy.engine import Connection as SAConnection

from .. import errors
from .driver import ROLLBACK, Driver, Step, Stmt, Tx
from .postgresql import PostgresDriver

T = TypeVar("T")

_CALL = "leasestore_call"  # around the whole step: the caller's transaction survives its failure
_TX = "leasestore_tx"  # for each transaction the step would have run on its own
SAVEPOINT_CALL = Stmt(f"SAVEPOINT {_CALL}")
RELEASE_CALL = Stmt(f"RELEASE SAVEPOINT {_CALL}")
ROLLBACK_CALL = Stmt(f"ROLLBACK TO SAVEPOINT {_CALL}")
SAVEPOINT_TX = Stmt(f"SAVEPOINT {_TX}")
RELEASE_TX = Stmt(f"RELEASE SAVEPOINT {_TX}")
ROLLBACK_TX = Stmt(f"ROLLBACK TO SAVEPOINT {_TX}")


def in_caller_transaction(step: Step[T]) -> Step[T]:
    """``step`` with its transactions turned into savepoints, all inside one
    savepoint that is rolled back if the step fails."""
    yield SAVEPOINT_CALL
    try:
        result = yield from _nested(step)
    except BaseException:
        try:
            yield ROLLBACK_CALL
            yield RELEASE_CALL
        except Exception:
            pass  # the connection itself failed: the caller's transaction is lost anyway
        raise
    yield RELEASE_CALL
    return result


def _nested(step: Step[T]) -> Step[T]:
    try:
        stmt = next(step)
        while True:
            if stmt.tx is Tx.BEGIN_WRITE or stmt.tx is Tx.BEGIN_READ:
                out = SAVEPOINT_TX
            elif stmt.tx is Tx.END:
                out = ROLLBACK_TX if stmt is ROLLBACK else RELEASE_TX
            else:
                out = stmt
            try:
                result = yield out
            except Exception as exc:
                stmt = step.throw(exc)
                continue
            if out is ROLLBACK_TX:
                yield RELEASE_TX
            stmt = step.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


def _refuse_sqlite(driver: Driver) -> None:
    if not isinstance(driver, PostgresDriver):
        raise errors.InvalidArgument(
            f"connection= needs a PostgreSQL store (this one is {driver.name}): SQLite has one writer at a time, "
            "so the store cannot write inside another connection's transaction")


def _check(raw: Any, url: URL, kind: type[Any]) -> None:
    if not isinstance(raw, kind):
        raise errors.InvalidArgument(
            f"connection must be a psycopg {kind.__name__} or a SQLAlchemy connection on psycopg, "
            f"not {type(raw).__name__}")
    if raw.closed:
        raise errors.InvalidArgument("connection is closed")
    status = raw.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise errors.InvalidArgument("connection's transaction has failed: roll it back first")
    if status == TransactionStatus.ACTIVE:
        raise errors.InvalidArgument("connection is running another statement")
    if raw.autocommit and status == TransactionStatus.IDLE:
        raise errors.InvalidArgument(
            "connection is in autocommit mode with no transaction open: use `with conn.transaction():`")
    if url.database is not None and raw.info.dbname != url.database:
        raise errors.InvalidArgument(
            f"connection is to database {raw.info.dbname!r}, the store's is {url.database!r}")


def blocking_connection(driver: Driver, url: URL, connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under ``connection``, checked: a transaction of the
    caller's, open (or about to open) on the store's database."""
    _refuse_sqlite(driver)
    raw = connection
    if isinstance(connection, SAConnection):
        if not connection.in_transaction():
            connection.begin()  # the caller's to commit, as SQLAlchemy's autobegin would be
        raw = connection.connection.driver_connection
    _check(raw, url, psycopg.Connection)
    checked: psycopg.Connection[Any] = raw
    return checked


async def async_connection(driver: Driver, url: URL, connection: Any) -> psycopg.AsyncConnection[Any]:
    """:func:`blocking_connection` for the asyncio face."""
    _refuse_sqlite(driver)
    raw = connection
    # A SQLAlchemy AsyncConnection exists only once its module is imported;
    # importing it here would cost every process that opens a store some 60 ms.
    sa_asyncio = sys.modules.get("sqlalchemy.ext.asyncio")
    if sa_asyncio is not None and isinstance(connection, sa_asyncio.AsyncConnection):
        if not connection.in_transaction():
            await connection.begin()
        raw = (await connection.get_raw_connection()).driver_connection
    _check(raw, url, psycopg.AsyncConnection)
    checked: psycopg.AsyncConnection[Any] = raw
    return checked
