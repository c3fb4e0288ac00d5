"""Engines, pooled DB-API connections, and the one seam for driver errors.

The hot path runs prepared SQL text on the pooled DB-API connection: the
operations are a handful of short statements, and building ORM objects for
them would cost several times the statements themselves. SQLAlchemy still owns
URLs, pooling, reconnection and DDL; SQLModel owns the table definitions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine

from .. import errors
from .dialect import Clock, Dialect
from .postgresql import PostgresDialect
from .sqlite import SqliteDialect, WriteGate, check_version, configure_connection

DEFAULT_BUSY_TIMEOUT = 5.0
DEFAULT_PG_CONNECT_TIMEOUT = 5
# A process paused inside a transaction keeps its row locks until this ends its session.
DEFAULT_PG_IDLE_IN_TRANSACTION_TIMEOUT = 10.0


@dataclass
class Database:
    engine: Engine
    dialect: Dialect
    url: URL

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled DB-API connection; driver errors leave as typed errors."""
        try:
            fairy = self.engine.raw_connection()
        except errors.LeaseStoreError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc
        try:
            yield fairy
        except errors.LeaseStoreError:
            raise
        except Exception as exc:
            typed = self.dialect.translate_error(exc)
            if typed is None:
                raise
            if self.dialect.is_disconnect(exc):
                # Never hand a dead connection to the next caller.
                fairy.invalidate()
            raise typed from exc
        finally:
            try:
                fairy.close()
            except Exception:
                # Returning a broken connection to the pool fails; the pool discards it.
                pass

    def _translated(self, exc: Exception) -> Exception:
        typed = self.dialect.translate_error(exc)
        if typed is None:
            return errors.StoreUnavailable(f"cannot connect to the database: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        return typed

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(
    url: URL,
    *,
    clock: Clock | None = None,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    fair_writes: bool = True,
    pg_idle_in_transaction_timeout: float = DEFAULT_PG_IDLE_IN_TRANSACTION_TIMEOUT,
    create_directories: bool = True,
) -> Database:
    clock = clock or Clock()
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
        return Database(engine, SqliteDialect(clock, gate), url)

    if backend == "postgresql":
        idle_ms = int(pg_idle_in_transaction_timeout * 1000)
        # Keep options given in the URL (e.g. a search_path) beside our own.
        url_options = url.query.get("options", "")
        if isinstance(url_options, tuple):
            url_options = " ".join(url_options)
        connect_args: dict[str, Any] = {
            "connect_timeout": DEFAULT_PG_CONNECT_TIMEOUT,
            "options": f"{url_options} -c idle_in_transaction_session_timeout={idle_ms}".strip(),
        }
        if "application_name" not in url.query:  # an operator's name for these sessions wins
            connect_args["application_name"] = "leasestore"
        engine = create_engine(
            url.difference_update_query(["options"]),
            isolation_level="AUTOCOMMIT",
            connect_args=connect_args,
            pool_size=4,
            max_overflow=8,
        )
        return Database(engine, PostgresDialect(clock), url)

    raise errors.ConfigurationError(f"unsupported database {backend!r}")
