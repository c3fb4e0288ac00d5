"""The only reader of leasestore's environment variables.

``LEASESTORE_DATABASE_URL`` (a SQLAlchemy URL) wins over ``ORCH_DB_PATH`` (a
SQLite file), which wins over ``~/.openclaw/data/orchestrator.db``. Only an
*unset* variable falls through: one set to an empty (or blank) value is refused,
as is an empty explicit value, so a script passing ``--db "$UNSET_VAR"`` never
lands on the default store.
Alert thresholds come from ``METRICS_THRESHOLD_*`` with the seed's defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

DATABASE_URL_ENV = "LEASESTORE_DATABASE_URL"
DB_PATH_ENV = "ORCH_DB_PATH"
DEFAULT_DB_PATH = Path("~/.openclaw/data/orchestrator.db")

SUPPORTED_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def not_empty(raw: str, problem: str, wanted: str = "a SQLite path or a database URL") -> str:
    """``raw`` unless it is empty or blank: then a :class:`ConfigurationError`
    saying ``problem`` (an explicitly empty value must never mean "the default")."""
    if raw.strip():
        return raw
    raise ConfigurationError(f"{problem}: give {wanted}, or leave it unset to use the default store")


def default_sqlite_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    raw = env.get(DB_PATH_ENV)
    if raw is None:
        return DEFAULT_DB_PATH.expanduser()
    return Path(not_empty(raw, f"{DB_PATH_ENV} is set but empty", "a SQLite path")).expanduser()


def resolve_database_url(
    explicit: str | None = None, env: Mapping[str, str] | None = None
) -> URL:
    """Return the SQLAlchemy URL the store should use, validated.

    An explicit value may be a URL or a plain path to a SQLite file; ``None``
    means the environment's choice. An empty or blank value, explicit or in
    ``LEASESTORE_DATABASE_URL``/``ORCH_DB_PATH``, raises :class:`ConfigurationError`.
    """
    env = os.environ if env is None else env
    if explicit is not None:
        raw = not_empty(explicit, "the database URL is empty")
    else:
        from_env = env.get(DATABASE_URL_ENV)
        if from_env is None:
            return sqlite_url(default_sqlite_path(env))
        raw = not_empty(from_env, f"{DATABASE_URL_ENV} is set but empty")
    if "://" not in raw:
        return sqlite_url(Path(raw).expanduser())
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"malformed database URL: {_redact(raw)}") from exc
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ConfigurationError(
                f"unsupported PostgreSQL driver {url.drivername!r}: use postgresql+psycopg://"
            )
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ConfigurationError(
                "SQLite needs a file path (in-memory databases cannot be shared by processes)"
            )
        return url
    raise ConfigurationError(
        f"unsupported database {backend!r}: use a SQLite path or postgresql+psycopg://"
    )


def sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def _redact(raw: str) -> str:
    # Never echo a password from a malformed URL into an error message.
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return raw


# --- alert thresholds -------------------------------------------------------

THRESHOLD_PREFIX = "METRICS_THRESHOLD_"


def read_threshold(
    names: tuple[str, ...], default: float, env: Mapping[str, str] | None = None
) -> float:
    """Read the first set variable among ``names`` (suffixes after the prefix)."""
    env = os.environ if env is None else env
    for name in names:
        raw = env.get(THRESHOLD_PREFIX + name)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"{THRESHOLD_PREFIX}{name}={raw!r} is not a number"
            ) from exc
        if not math.isfinite(value) or value < 0:
            raise ConfigurationError(
                f"{THRESHOLD_PREFIX}{name}={raw!r} must be a finite number >= 0"
            )
        return value
    return default
