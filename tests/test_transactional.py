"""Transactional completion and enqueue: the store's writes inside the agent's own transaction.

On PostgreSQL an agent passes ``connection=`` (psycopg or SQLAlchemy, blocking
or asyncio) to ``release_task``, ``heartbeat`` and ``enqueue``/``enqueue_many``:
they commit or roll back with the agent's own rows, the fencing check is made
in that transaction, and a refusal's conflict row is written on the store's own
connection. Every behaviour runs on the four kinds of connection; SQLite refuses
``connection=`` with a typed error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from faces import open_store
from sqlalchemy.ext.asyncio import create_async_engine

from leasestore import InvalidArgument, LeaseLost, LeaseStore
from leasestore.history import check_history
from leasestore.models import TaskStatus

KINDS = [("sync", "psycopg"), ("sync", "sqlalchemy"), ("async", "psycopg"), ("async", "sqlalchemy")]


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class AgentTx:
    """The agent's own connection and transaction, behind blocking calls
    (the asyncio kinds run on the async store's own event loop)."""

    def __init__(self, face: str, kind: str, url: str, store: Any) -> None:
        self.face, self.kind = face, kind
        self._run = store.run_on_loop if face == "async" else (lambda value: value)
        self._engine: Any = None
        if (face, kind) == ("sync", "psycopg"):
            self.conn: Any = psycopg.connect(_plain(url))
        elif (face, kind) == ("sync", "sqlalchemy"):
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self.conn = self._engine.connect()
        elif kind == "psycopg":
            self.conn = self._run(psycopg.AsyncConnection.connect(_plain(url)))
        else:
            self._engine = create_async_engine(url, poolclass=sqlalchemy.pool.NullPool)
            self.conn = self._run(self._engine.connect())

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        if self.kind == "psycopg":
            self._run(self.conn.execute(sql.replace(":id", "%(id)s"), params))
        else:
            self._run(self.conn.execute(sqlalchemy.text(sql), params or {}))

    def commit(self) -> None:
        self._run(self.conn.commit())

    def rollback(self) -> None:
        self._run(self.conn.rollback())

    def close(self) -> None:
        self._run(self.conn.close())
        if self._engine is not None:
            disposed = self._engine.dispose()
            if self.face == "async":
                self._run(disposed)


@pytest.fixture(params=KINDS, ids=[f"{f}-{k}" for f, k in KINDS])
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


@pytest.fixture
def store(pg_url: str, kind: tuple[str, str]) -> Iterator[Any]:
    ensure_agent_table(pg_url)
    s = open_store(kind[0], pg_url)
    yield s
    s.close()


@pytest.fixture
def agent(store: Any, pg_url: str, kind: tuple[str, str]) -> Iterator[AgentTx]:
    tx = AgentTx(kind[0], kind[1], pg_url, store)
    yield tx
    tx.close()


def ensure_agent_table(url: str) -> None:
    """The agent's own table, beside the store's."""
    with psycopg.connect(_plain(url)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS agent_rows (id text PRIMARY KEY)")


def agent_rows(url: str, key: str) -> list[str]:
    with psycopg.connect(_plain(url)) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM agent_rows WHERE id LIKE %s ORDER BY id", (key + "%",))]


def lock_rows(store: Any, task_id: str) -> list[tuple[str, str, str | None]]:
    rows = store.database.query("SELECT op, outcome, owner FROM lock_events WHERE task_id = :id ORDER BY id",
                                {"id": task_id})
    return [tuple(r) for r in rows]


def claimed(store: Any, ttl: float = 30) -> Any:
    queue = f"tx-{uuid.uuid4().hex[:8]}"
    task_id = store.enqueue(queue, {"job": 1}).task_id
    lease = store.claim_task(queue, "agent", ttl=ttl).lease
    assert lease is not None and lease.task_id == task_id
    return lease


def test_release_commits_with_the_agents_rows(store: Any, agent: AgentTx, pg_url: str) -> None:
    lease = claimed(store)
    agent.execute("INSERT INTO agent_rows VALUES (:id)", {"id": lease.task_id})
    result = store.release_task(lease, "done", result={"answer": 42}, connection=agent.conn)
    assert result.result == "done"
    # Not committed yet: others still see the lease, and not the agent's row.
    assert store.get_task(lease.task_id).status == TaskStatus.LEASED
    assert agent_rows(pg_url, lease.task_id) == []
    agent.commit()
    task = store.get_task(lease.task_id)
    assert (task.status, task.result) == (TaskStatus.DONE, {"answer": 42})
    assert agent_rows(pg_url, lease.task_id) == [lease.task_id]


def test_a_rolled_back_release_leaves_the_lease_held(store: Any, agent: AgentTx, pg_url: str) -> None:
    lease = claimed(store)
    agent.execute("INSERT INTO agent_rows VALUES (:id)", {"id": lease.task_id})
    store.release_task(lease, "done", result={"answer": 1}, connection=agent.conn)
    agent.rollback()
    task = store.get_task(lease.task_id)
    assert (task.status, task.result, task.owner) == (TaskStatus.LEASED, None, "agent")
    assert agent_rows(pg_url, lease.task_id) == []
    # The lease is still the holder's: it can still finish, on its own.
    assert store.release_task(lease, "done").result == "done"
    kinds = [e["kind"] for e in store.events(task_id=lease.task_id)]
    assert kinds.count("released") == 1, kinds


def test_a_stale_holders_transaction_is_refused_and_its_rows_not_committed(
        store: Any, agent: AgentTx, pg_url: str) -> None:
    lease = claimed(store, ttl=0.3)
    time.sleep(0.5)
    taker = store.claim_task(lease.queue, "taker", ttl=30).lease
    assert taker is not None and taker.took_over
    agent.execute("INSERT INTO agent_rows VALUES (:id)", {"id": lease.task_id})
    with pytest.raises(LeaseLost) as lost:
        store.release_task(lease, "done", result={"late": True}, connection=agent.conn)
    assert lost.value.reason == "taken_over"
    agent.rollback()
    assert agent_rows(pg_url, lease.task_id) == []
    task = store.get_task(lease.task_id)
    assert (task.status, task.owner, task.result) == (TaskStatus.LEASED, "taker", None)
    # The refusal was recorded on the store's own connection: it outlives the rollback.
    assert ("release", "conflict", "taker") in lock_rows(store, lease.task_id)
    store.release_task(taker, "done", result={"by": "taker"}, connection=agent.conn)
    agent.commit()
    with LeaseStore(pg_url) as reader:
        report = check_history(reader)
    assert report.ok, report.summary()


def test_the_callers_transaction_survives_a_refusal(store: Any, agent: AgentTx, pg_url: str) -> None:
    """The store's part is a savepoint: a refused write leaves the agent's
    transaction usable, for it to decide (here: commit its other rows)."""
    lease = claimed(store)
    store.release_task(lease, "done")
    agent.execute("INSERT INTO agent_rows VALUES (:id)", {"id": lease.task_id + "-kept"})
    with pytest.raises(LeaseLost):
        store.heartbeat(lease, checkpoint={"late": 1}, connection=agent.conn)
    agent.execute("INSERT INTO agent_rows VALUES (:id)", {"id": lease.task_id + "-more"})
    agent.commit()
    assert agent_rows(pg_url, lease.task_id) == [lease.task_id + "-kept", lease.task_id + "-more"]


def test_checkpoint_rolls_back_with_the_agent(store: Any, agent: AgentTx) -> None:
    lease = claimed(store)
    store.heartbeat(lease, checkpoint={"step": 1})
    store.heartbeat(lease, checkpoint={"step": 2}, connection=agent.conn)
    agent.rollback()
    assert store.get_task(lease.task_id).checkpoint == {"step": 1}
    store.heartbeat(lease, checkpoint={"step": 3}, connection=agent.conn)
    agent.commit()
    assert store.get_task(lease.task_id).checkpoint == {"step": 3}


def test_follow_up_tasks_are_enqueued_with_the_release(store: Any, agent: AgentTx) -> None:
    lease = claimed(store)
    follow = f"{lease.queue}-next"
    store.enqueue_many(follow, [{"part": 1}, {"part": 2}], connection=agent.conn)
    store.release_task(lease, "done", connection=agent.conn)
    agent.rollback()
    assert store.claim_task(follow, "sub", ttl=30).lease is None
    assert store.get_task(lease.task_id).status == TaskStatus.LEASED
    first = store.enqueue(follow, {"part": 1}, connection=agent.conn)
    store.release_task(lease, "done", connection=agent.conn)
    agent.commit()
    assert first.created
    sub = store.claim_task(follow, "sub", ttl=30).lease
    assert sub is not None and sub.task_id == first.task_id
    assert store.get_task(lease.task_id).status == TaskStatus.DONE


def test_a_waiting_claimer_is_woken_at_commit_not_before(store: Any, agent: AgentTx, pg_url: str) -> None:
    queue = f"tx-wake-{uuid.uuid4().hex[:8]}"
    got: dict[str, Any] = {}
    waiter_store = LeaseStore(pg_url)

    def wait() -> None:
        got["claim"] = waiter_store.claim_task(queue, "waiter", ttl=30, wait=10)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)  # the claimer is listening
    store.enqueue(queue, {"job": 1}, connection=agent.conn)
    time.sleep(0.5)
    assert "claim" not in got, "claimed a task that was not committed"
    committed = time.monotonic()
    agent.commit()
    waiter.join(timeout=10)
    waiter_store.close()
    assert got["claim"].lease is not None
    assert got["at"] - committed < 1.0, "woken by the commit's NOTIFY, not by the slow poll"


def test_bad_connections_are_refused_with_nothing_written(store: Any, agent: AgentTx, pg_url: str,
                                                          kind: tuple[str, str]) -> None:
    lease = claimed(store)
    with pytest.raises(InvalidArgument, match="connection must be"):
        store.release_task(lease, "done", connection="postgresql://wrong")
    if kind == ("sync", "psycopg"):
        with psycopg.connect(_plain(pg_url), autocommit=True) as auto:
            with pytest.raises(InvalidArgument, match="autocommit"):
                store.release_task(lease, "done", connection=auto)
        with pytest.raises(psycopg.errors.DivisionByZero):
            agent.execute("SELECT 1 / 0")
        with pytest.raises(InvalidArgument, match="failed: roll it back"):
            store.release_task(lease, "done", connection=agent.conn)
        agent.rollback()
    assert store.get_task(lease.task_id).status == TaskStatus.LEASED
    assert [e["kind"] for e in store.events(task_id=lease.task_id)] == ["enqueued", "claimed"]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_sqlite_refuses_a_connection_with_a_typed_error(sqlite_url: str, pg_url: str, face: str) -> None:
    store = open_store(face, sqlite_url)
    try:
        lease = claimed(store)
        with psycopg.connect(_plain(pg_url)) as conn:
            for call in (lambda: store.release_task(lease, "done", connection=conn),
                         lambda: store.heartbeat(lease, connection=conn),
                         lambda: store.enqueue("q", {}, connection=conn)):
                with pytest.raises(InvalidArgument, match="needs a PostgreSQL store"):
                    call()
        assert store.get_task(lease.task_id).status == TaskStatus.LEASED
    finally:
        store.close()


# --- SIGKILL between the agent's write and its commit --------------------------------
AGENT = textwrap.dedent("""
    import json, sys, time
    import psycopg
    from leasestore import LeaseStore
    url, task_id, token, fence = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = LeaseStore(url, init=False)
    from leasestore.types import LeaseRef
    lease = LeaseRef(task_id=task_id, token=token, fencing_token=fence)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("INSERT INTO agent_rows VALUES (%s)", (task_id,))
        store.enqueue("after-" + task_id, {"follow": 1}, connection=conn)
        store.release_task(lease, "done", result={"by": "killed"}, connection=conn)
        print("written", flush=True)
        time.sleep(60)  # killed here, before the commit
        conn.commit()
""")


def test_sigkill_between_the_agents_write_and_its_commit_leaves_neither(pg_url: str, tmp_path: Path) -> None:
    ensure_agent_table(pg_url)
    store = LeaseStore(pg_url)
    ttl = 3.0  # long enough for the agent process to start and write
    lease = claimed(store, ttl=ttl)
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    proc = subprocess.Popen([sys.executable, str(script), pg_url, lease.task_id, lease.token,
                             str(lease.fencing_token)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert agent_rows(pg_url, lease.task_id) == []
    task = store.get_task(lease.task_id)
    assert (task.status, task.result) == (TaskStatus.LEASED, None)
    assert store.claim_task("after-" + lease.task_id, "sub", ttl=30).lease is None
    # The task is not lost: once its lease runs out it is another agent's.
    time.sleep(max(0.0, lease.expires_at - time.time()) + 0.3)
    again = store.claim_task(lease.queue, "second", ttl=30).lease
    assert again is not None and again.task_id == lease.task_id and again.took_over
    store.release_task(again, "done")
    report = check_history(store)
    assert report.ok, report.summary()
    store.close()
