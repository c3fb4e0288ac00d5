"""Create or upgrade the schema idempotently, in one transaction."""

from __future__ import annotations

from sqlmodel import SQLModel

from .. import errors, models
from .engine import Database

REQUIRED_TABLES = ("tasks", "event_log", "lock_events", "dead_letters", "alerts", "leasestore_meta")


def init_db(db: Database) -> int:
    """Create missing tables, indexes and triggers; return the schema version.

    Safe to run twice and from several processes at once.
    """
    tables = [SQLModel.metadata.tables[name] for name in REQUIRED_TABLES]
    with db.engine.connect() as conn:
        driver_cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            # The engine runs in autocommit; BEGIN makes the whole upgrade atomic
            # (both SQLite and PostgreSQL have transactional DDL).
            driver_cur.execute("BEGIN IMMEDIATE" if db.dialect.name == "sqlite" else "BEGIN")
            db.dialect.lock_schema(driver_cur)
            SQLModel.metadata.create_all(conn, tables=tables, checkfirst=True)
            for statement in db.dialect.schema_extras():
                driver_cur.execute(statement)
            stored = _stored_version(driver_cur, db)
            if stored is not None and stored > models.SCHEMA_VERSION:
                raise errors.ConfigurationError(
                    f"database schema version {stored} is newer than this leasestore "
                    f"({models.SCHEMA_VERSION}); upgrade leasestore"
                )
            if stored is None:
                driver_cur.execute(
                    db.dialect.sql(
                        "INSERT INTO leasestore_meta (key, value) VALUES ('schema_version', :v)"
                    ),
                    {"v": str(models.SCHEMA_VERSION)},
                )
            elif stored < models.SCHEMA_VERSION:
                driver_cur.execute(
                    db.dialect.sql(
                        "UPDATE leasestore_meta SET value = :v WHERE key = 'schema_version'"
                    ),
                    {"v": str(models.SCHEMA_VERSION)},
                )
            driver_cur.execute("COMMIT")
        except BaseException as exc:
            try:
                driver_cur.execute("ROLLBACK")
            except Exception:
                pass
            typed = db.dialect.translate_error(exc)
            if typed is not None:
                raise typed from exc
            raise
    return models.SCHEMA_VERSION


def _stored_version(cur: object, db: Database) -> int | None:
    cur.execute("SELECT value FROM leasestore_meta WHERE key = 'schema_version'")  # type: ignore[attr-defined]
    row = cur.fetchone()  # type: ignore[attr-defined]
    return int(row[0]) if row else None


def schema_version(db: Database) -> int | None:
    """The stored schema version, or None when the database has no schema."""
    try:
        with db.connection() as conn, db.dialect.read_transaction(conn) as cur:
            cur.execute("SELECT value FROM leasestore_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            return int(row[0]) if row else None
    except errors.SchemaNotInitialized:
        return None
