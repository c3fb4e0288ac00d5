"""The seam between the store and a database: one subclass per backend.

``store.py`` never branches on the backend; it calls these methods. Each
subclass owns the SQL that must differ by dialect and translates its driver's
errors into :mod:`leasestore.errors` in one place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from . import queries


@dataclass
class Clock:
    """Offset applied to the database clock; tests move time with it."""

    offset: float = 0.0


class Dialect:
    name: ClassVar[str]
    paramstyle_named: ClassVar[bool]

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._sql_cache: dict[str, str] = {}

    # --- SQL text ---------------------------------------------------------
    def sql(self, statement: str) -> str:
        """Return ``statement`` in this driver's parameter style (cached)."""
        cached = self._sql_cache.get(statement)
        if cached is None:
            cached = statement if self.paramstyle_named else queries.to_pyformat(statement)
            self._sql_cache[statement] = cached
        return cached

    def execute(self, cur: Any, statement: str, params: dict[str, Any] | None = None) -> Any:
        cur.execute(self.sql(statement), params or {})
        return cur

    def fetchone(self, cur: Any, statement: str, params: dict[str, Any] | None = None) -> Sequence[Any] | None:
        return self.execute(cur, statement, params).fetchone()

    def fetchall(self, cur: Any, statement: str, params: dict[str, Any] | None = None) -> list[Sequence[Any]]:
        return list(self.execute(cur, statement, params).fetchall())

    # --- transactions -----------------------------------------------------
    begin_write: ClassVar[str]
    begin_read: ClassVar[str]
    driver_error: ClassVar[type[Exception]]

    @contextmanager
    def write_transaction(self, conn: Any) -> Iterator[Any]:
        """A write transaction that holds whatever lock the backend needs up front."""
        cur = conn.cursor()
        cur.execute(self.begin_write)
        try:
            yield cur
        except BaseException:
            self._rollback_quietly(cur)
            raise
        cur.execute("COMMIT")

    @contextmanager
    def read_transaction(self, conn: Any) -> Iterator[Any]:
        """A consistent read snapshot (one transaction)."""
        cur = conn.cursor()
        cur.execute(self.begin_read)
        try:
            yield cur
        finally:
            self._rollback_quietly(cur)

    def _rollback_quietly(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
        except self.driver_error:
            # Nothing left to roll back: the driver or the server already ended it.
            pass

    def now(self, cur: Any) -> float:
        """The database clock, epoch seconds, plus the test offset."""
        raise NotImplementedError

    # --- dialect-specific selects ----------------------------------------
    def select_next_pending(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        """(id, fencing_token) of the next ready task, locked against other claimers."""
        raise NotImplementedError

    def select_expired_candidate(self, cur: Any, queue: str, now: float) -> Sequence[Any] | None:
        """(id, owner, fencing_token, lease_expires_at) of an expired lease below its limit."""
        raise NotImplementedError

    def select_task_for_update(self, cur: Any, task_id: str) -> Sequence[Any] | None:
        raise NotImplementedError

    def select_expired_batch(self, cur: Any, now: float, limit: int) -> list[Sequence[Any]]:
        raise NotImplementedError

    # --- one-round-trip hot paths (optional) ----------------------------------
    supports_fused: ClassVar[bool] = False

    def claim_next_fused(self, cur: Any, params: dict[str, Any]) -> tuple[str, Sequence[Any]] | None:
        """("claimed", lease row) or ("mine", (task id,)) or None; autocommitted."""
        raise NotImplementedError

    def release_fused(self, cur: Any, params: dict[str, Any]) -> Sequence[Any] | None:
        """(queue, owner, available_at) of a done/retry release, or None if refused."""
        raise NotImplementedError

    def heartbeat_fused(self, cur: Any, params: dict[str, Any]) -> Sequence[Any] | None:
        """(fencing_token, lease_expires_at) of an extended lease, or None if refused."""
        raise NotImplementedError

    # --- schema -----------------------------------------------------------
    def schema_extras(self) -> list[str]:
        """DDL beyond the tables: append-only triggers, functions. Idempotent."""
        raise NotImplementedError

    def lock_schema(self, cur: Any) -> None:
        """Serialise concurrent ``init-db`` runs."""

    # --- errors -----------------------------------------------------------
    def translate_error(self, exc: BaseException) -> Exception | None:
        """Return the typed error for a driver error, or None if it is not one."""
        raise NotImplementedError

    def is_disconnect(self, exc: BaseException) -> bool:
        return False


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
