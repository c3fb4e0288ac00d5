"""One suite, both faces: the asyncio store driven through blocking calls.

:func:`open_store` gives a :class:`~leasestore.LeaseStore` for ``face="sync"``
and, for ``face="async"``, a :class:`BlockingAsyncStore`: every coroutine of an
:class:`~leasestore.AsyncLeaseStore` run to completion on the test's own event
loop (an ``asyncio.Runner``), so a test written once against the blocking API
exercises the asyncio face, its runner and (on PostgreSQL) its native pool.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from leasestore import AsyncLeaseStore, LeaseStore

FACES = ("sync", "async")


class _Blocking:
    """Runs whatever coroutine an attribute call returns; wraps nested objects."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not (inspect.ismethod(value) or inspect.isfunction(value)):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._runner.run(_awaited(result))
            if hasattr(result, "__aenter__"):
                return _BlockingContext(result, self._runner)
            return result

        return call


class _BlockingContext:
    """``async with`` as ``with``: the heartbeat task runs whenever the test's
    loop does (during the block's own store calls), not on its own."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __enter__(self) -> Any:
        handle = self._runner.run(_awaited(self._target.__aenter__()))
        return None if handle is None else _Blocking(handle, self._runner)

    def __exit__(self, *exc: Any) -> Any:
        return self._runner.run(_awaited(self._target.__aexit__(*exc)))


async def _awaited(result: Any) -> Any:
    return await result


class BlockingAsyncStore(_Blocking):
    """An :class:`AsyncLeaseStore` behind blocking methods (tests only)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        runner = asyncio.Runner()
        super().__init__(runner.run(_opened(url, kwargs)), runner)

    @property
    def database(self) -> Any:
        return _Blocking(self._target.database, self._runner)

    def run_on_loop(self, awaitable: Any) -> Any:
        """Await something else on the store's own event loop (e.g. the test's
        own asyncio connection, which must share the store's loop)."""
        return self._runner.run(_awaited(awaitable))

    def close(self) -> None:
        try:
            self._runner.run(self._target.close())
        finally:
            self._runner.close()

    def __enter__(self) -> BlockingAsyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BlockingAsyncStore({self._target!r})"


async def _opened(url: str, kwargs: dict[str, Any]) -> AsyncLeaseStore:
    store = AsyncLeaseStore(url, **kwargs)
    await store.__aenter__()
    return store


def open_store(face: str, url: str, **kwargs: Any) -> Any:
    """A store of the given face; both answer the blocking API."""
    if face == "sync":
        return LeaseStore(url, **kwargs)
    return BlockingAsyncStore(url, **kwargs)
