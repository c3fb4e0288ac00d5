"""The asyncio runner: the same steps as :mod:`engine`, driven without blocking
the event loop.

PostgreSQL runs on psycopg's native ``AsyncConnection`` from a bounded
``AsyncConnectionPool`` (:mod:`leasestore.db.apostgresql`). SQLite has no async driver: the whole step runs on a
worker thread, one hop per operation (not per statement), as aiosqlite does
per connection, so busy waits for the write lock stay off the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from .driver import Driver, Step
from .engine import DISCONNECT_RETRIES, Database, Op
from .sqlite import SqliteDriver

T = TypeVar("T")

DEFAULT_POOL_SIZE = 20


class AsyncDatabase(Protocol):
    driver: Driver

    async def run(self, op: Op[T], *, retries: int = DISCONNECT_RETRIES) -> T: ...

    async def run_in_transaction(self, connection: Any, op: Op[T]) -> T: ...

    async def write(self, body: Callable[[float], Step[T]]) -> T: ...

    async def read(self, body: Callable[[float], Step[T]]) -> T: ...

    async def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]: ...

    async def close(self) -> None: ...

    async def ready_listener(self) -> AsyncReadyWaiter: ...


class AsyncReadyWaiter(Protocol):
    notified: bool

    async def wait(self, queue: str, timeout: float) -> bool: ...

    def mark(self, queue: str) -> None:
        """Note what the waiter has seen, just before it looks."""

    def passed_on(self, queue: str) -> None: ...

    async def close(self) -> None: ...


class AsyncSleeper:
    """Waits by sleeping (without blocking the loop): where nothing wakes a claim."""

    notified = False

    async def wait(self, queue: str, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False

    def mark(self, queue: str) -> None:
        pass

    def passed_on(self, queue: str) -> None:
        pass

    async def close(self) -> None:
        pass


class ThreadedAsyncDatabase:
    """A blocking :class:`Database` driven on worker threads (SQLite)."""

    def __init__(self, db: Database, *, workers: int = 4) -> None:
        self.driver = db.driver
        self._db = db
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leasestore-sqlite")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, op: Op[T], *, retries: int = DISCONNECT_RETRIES) -> T:
        return await self._call(lambda: self._db.run(op, retries=retries))

    async def run_in_transaction(self, connection: Any, op: Op[T]) -> T:
        from . import caller  # psycopg, loaded only when a caller's connection is passed

        await caller.async_connection(self.driver, self._db.url, connection)  # refuses: SQLite
        raise AssertionError("unreachable: a SQLite store refuses connection=")

    async def write(self, body: Callable[[float], Step[T]]) -> T:
        return await self._call(lambda: self._db.write(body))

    async def read(self, body: Callable[[float], Step[T]]) -> T:
        return await self._call(lambda: self._db.read(body))

    async def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        return await self._call(lambda: self._db.query(sql, params))

    async def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def ready_listener(self) -> AsyncReadyWaiter:
        return AsyncSleeper()


def open_async(db: Database, *, pool_size: int = DEFAULT_POOL_SIZE) -> AsyncDatabase:
    """The asyncio runner for an opened :class:`Database`, native where the driver is."""
    if not isinstance(db.driver, SqliteDriver):
        # (psycopg's asyncio layer is loaded only for a PostgreSQL store)
        from .apostgresql import PostgresAsyncDatabase

        return PostgresAsyncDatabase(db, pool_size=pool_size)
    # One thread: SQLite takes one writer at a time anyway, and more threads
    # only queue on the write gate (measured: 0.65 of the blocking face with
    # one thread, 0.48 with four).
    return ThreadedAsyncDatabase(db, workers=1)

