"""Create or upgrade the schema idempotently, in one transaction."""

from __future__ import annotations

from typing import Any

from .. import errors
from ..states import SCHEMA_VERSION
from .driver import Step
from .queries import MIGRATIONS
from .engine import Database, fetch

REQUIRED_TABLES = ("tasks", "event_log", "lock_events", "dead_letters", "alerts", "leasestore_meta",
                   "queue_settings")


def _run_on(cur: Any, step: Step[Any]) -> Any:
    """Drive a schema step on the DDL connection's own cursor (no pool, no gate:
    the schema transaction is the only writer it needs to exclude)."""
    try:
        stmt = next(step)
        while True:
            cur.execute(stmt.sql, stmt.params)
            stmt = step.send(fetch(cur, stmt.fetch))
    except StopIteration as stop:
        return stop.value


def init_db(db: Database) -> int:
    """Create missing tables, indexes and triggers; return the schema version.

    Safe to run twice and from several processes at once.
    """
    # The tables' definitions only now: opening a store that has its schema
    # (every agent, the CLI, the exporter) never imports SQLModel.
    from sqlmodel import SQLModel

    from .. import models  # noqa: F401 - defines the tables in SQLModel.metadata

    tables = [SQLModel.metadata.tables[name] for name in REQUIRED_TABLES]
    driver = db.driver
    with db.engine.connect() as conn:
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            # The engine runs in autocommit; BEGIN makes the whole upgrade atomic
            # (both SQLite and PostgreSQL have transactional DDL).
            _run_on(cur, driver.begin_write())
            _run_on(cur, driver.lock_schema())
            SQLModel.metadata.create_all(conn, tables=tables, checkfirst=True)
            for statement in driver.schema_extras():
                cur.execute(statement)
            stored = _run_on(cur, driver.stored_schema_version())
            if stored is not None and stored > SCHEMA_VERSION:
                raise errors.ConfigurationError(
                    f"database schema version {stored} is newer than this leasestore "
                    f"({SCHEMA_VERSION}); upgrade leasestore"
                )
            if stored is not None:
                for version in range(stored + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(version, ()):
                        cur.execute(statement)
                # Indexes of tables that existed before: create_all made only new tables'.
                for table in tables:
                    for index in table.indexes:
                        index.create(conn, checkfirst=True)
            if stored is None or stored < SCHEMA_VERSION:
                _run_on(cur, driver.store_schema_version(SCHEMA_VERSION, update=stored is not None))
            _run_on(cur, driver.commit())
        except BaseException as exc:
            try:
                cur.execute("ROLLBACK")
            except Exception:
                pass
            typed = driver.translate_error(exc)
            if typed is not None:
                raise typed from exc
            raise
    return SCHEMA_VERSION


def schema_version(db: Database) -> int | None:
    """The stored schema version, or None when the database has no schema."""
    try:
        return db.read(lambda now: db.driver.stored_schema_version())
    except errors.SchemaNotInitialized:
        return None


