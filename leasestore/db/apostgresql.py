"""The asyncio runner on PostgreSQL: the same steps as :mod:`engine`, on
psycopg's native ``AsyncConnection`` from a bounded ``AsyncConnectionPool``.

A module of its own so that a SQLite store never loads psycopg.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .. import errors
from . import caller
from .driver import Driver, Step, Tx
from .engine import DISCONNECT_RETRIES, Database, Op, StepRun, committed_query, fetch, first_line, unreachable
from .postgresql import AsyncReadyHub, connect_kwargs

T = TypeVar("T")

DEFAULT_POOL_TIMEOUT = 10.0


class _HubWaiter:
    """One waiting claim's view of the store's shared :class:`AsyncReadyHub`."""

    notified = True

    def __init__(self, hub: AsyncReadyHub, driver: Driver) -> None:
        self._hub = hub
        self._driver = driver
        self._seen: dict[str, int] = {}

    async def listening(self) -> None:
        try:
            await self._hub.listening()
        except Exception as exc:
            raise unreachable(self._driver, exc, "listen for new tasks") from exc

    def mark(self, queue: str) -> None:
        self._seen[queue] = self._hub.generation(queue)

    async def wait(self, queue: str, timeout: float) -> bool:
        try:
            return await self._hub.wait(queue, timeout, self._seen.get(queue, -1))
        except Exception as exc:
            raise unreachable(self._driver, exc, "listen for new tasks") from exc

    def passed_on(self, queue: str) -> None:
        """This waiter got a task: wake the next, in case more arrived at once."""
        self._hub.wake(queue)

    async def close(self) -> None:
        pass


async def adrive(run: StepRun, conn: AsyncConnection[Any]) -> Any:
    """Run ``run.step`` on an asyncio psycopg connection."""
    step = run.step
    cur = conn.cursor()
    try:
        stmt = next(step)
        while True:
            tx = stmt.tx
            if tx is not Tx.NONE:
                run.before(stmt)
            try:
                await cur.execute(stmt.sql, stmt.params)
                result = fetch(cur, stmt.fetch)
                if asyncio.iscoroutine(result):
                    result = await result
            except Exception as exc:
                stmt = step.throw(run.failed(stmt, exc))
                continue
            if tx is not Tx.NONE:
                run.after(stmt)
            stmt = step.send(result)
    except StopIteration as stop:
        return stop.value
    except asyncio.CancelledError:
        # The statement may still be running or its transaction open: a closed
        # connection ends both on the server, and the pool discards it.
        run.disconnected = True
        raise
    except BaseException:
        if run.in_transaction and not run.disconnected:
            try:
                await conn.rollback()
            except Exception:
                run.disconnected = True
        raise
    finally:
        run.close()


async def aretrying(attempt: Callable[[], Any], retries: int) -> Any:
    tries = 0
    while True:
        try:
            return await attempt()
        except errors.StoreUnavailable as exc:
            if tries >= retries or type(exc) is not errors.StoreUnavailable:
                raise
            tries += 1


class PostgresAsyncDatabase:
    """psycopg ``AsyncConnection``s from a bounded pool (opened on first use)."""

    def __init__(self, db: Database, *, pool_size: int, pool_timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
        self.driver = db.driver
        self._url = db.url
        self._hub: AsyncReadyHub | None = None
        conninfo, kwargs = connect_kwargs(db.url)
        self._pool = AsyncConnectionPool(
            conninfo, kwargs={**kwargs, "autocommit": True}, min_size=1, max_size=pool_size,
            timeout=pool_timeout, open=False, name="leasestore")
        self._opened = False
        self._open_lock: asyncio.Lock | None = None

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def run_in_transaction(self, connection: Any, op: Op[T]) -> T:
        """Run the step ``op()`` inside the caller's transaction on ``connection``
        (:mod:`leasestore.db.caller`); never retried, never committed here."""
        raw = await caller.async_connection(self.driver, self._url, connection)
        result: T = await adrive(StepRun(self.driver, caller.in_caller_transaction(op())), raw)
        return result

    async def run(self, op: Op[T], *, retries: int = DISCONNECT_RETRIES) -> T:
        await self._ensure_open()

        async def attempt() -> T:
            run = StepRun(self.driver, op())
            try:
                conn = await self._pool.getconn()
            except PoolTimeout as exc:
                run.close()
                raise errors.StoreBusy(f"no database connection free: {first_line(exc)}") from exc
            except Exception as exc:
                run.close()
                raise unreachable(self.driver, exc, "connect to the database") from exc
            try:
                result: T = await adrive(run, conn)
                return result
            finally:
                if run.disconnected:
                    await _close_quietly(conn)
                await self._pool.putconn(conn)
                if run.disconnected:
                    # A server restart or a cut network ends every idle
                    # connection too: drop them before the retry takes one.
                    await self._pool.check()

        result: T = await aretrying(attempt, retries)
        return result

    async def write(self, body: Callable[[float], Step[T]]) -> T:
        return await self.run(lambda: self.driver.write(body))

    async def read(self, body: Callable[[float], Step[T]]) -> T:
        return await self.run(lambda: self.driver.read(body))

    async def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        return await self.run(lambda: committed_query(self.driver, sql, params))

    async def close(self) -> None:
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def ready_listener(self) -> _HubWaiter:
        if self._hub is None:
            self._hub = AsyncReadyHub(self._url)
        waiter = _HubWaiter(self._hub, self.driver)
        await waiter.listening()
        return waiter


async def _close_quietly(conn: AsyncConnection[Any]) -> None:
    try:
        await conn.close()
    except Exception:
        pass
