"""Shared fixtures: every store test runs on a real SQLite file and a real PostgreSQL.

PostgreSQL and Prometheus are required. On a machine without them, set
``LEASESTORE_TEST_ALLOW_SKIP=1`` to skip those tests instead of failing; CI
never sets it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from leasestore import NO_BACKOFF, LeaseStore

from tests.faces import FACES, open_store

# Tests must not see a user's store or thresholds; the test switches stay.
for _name in list(os.environ):
    if _name.startswith("LEASESTORE_TEST_"):
        continue
    if _name.startswith(("LEASESTORE_", "METRICS_THRESHOLD_")) or _name == "ORCH_DB_PATH":
        del os.environ[_name]

PG_DSN = os.environ.get("LEASESTORE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ALLOW_SKIP = os.environ.get("LEASESTORE_TEST_ALLOW_SKIP") == "1"


def require(available: bool, what: str) -> None:
    """Fail (or, with the opt-out, skip) when a real component is missing."""
    if available:
        return
    if ALLOW_SKIP:
        pytest.skip(f"{what} not available (LEASESTORE_TEST_ALLOW_SKIP=1)")
    pytest.fail(f"{what} is required; set LEASESTORE_TEST_ALLOW_SKIP=1 to skip instead", pytrace=False)


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, name)
    assert path is not None
    return path


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """A SQLAlchemy URL for a fresh PostgreSQL schema, dropped afterwards."""
    require(pg_available, "PostgreSQL at " + PG_DSN)
    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """The same test on both backends."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=FACES)
def face(request) -> str:
    """The same test through the blocking and the asyncio face."""
    return str(request.param)


@pytest.fixture
def store(db_url: str, face: str) -> Iterator[LeaseStore]:
    """A store with no retry backoff, so failed tasks are claimable at once, on
    each backend and through each face."""
    s = open_store(face, db_url, retry_policy=NO_BACKOFF)
    yield s
    s.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (``make test`` runs two workers) the slow tests, which
    # race many processes and measure timings, all go to one worker and run one
    # after another: two of them side by side on a two-core machine would starve
    # each other's processes. The rest of the suite runs on the other worker.
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("slow"))
