"""Priorities, batch claims, results and waiting for a task: on both backends,
through both faces."""

from __future__ import annotations

import threading
import time

import pytest

from leasestore import InvalidArgument, LeaseStore, WaitTimeout
from leasestore.history import check_history


def test_higher_priority_first_then_oldest(store: LeaseStore) -> None:
    store.enqueue("q", task_id="low-old", priority=0)
    store.enqueue("q", task_id="high", priority=5)
    store.enqueue("q", task_id="low-new", priority=0)
    store.enqueue("q", task_id="mid", priority=1)
    store.enqueue("q", task_id="negative", priority=-3)
    order = []
    while (claim := store.claim_task("q", "a", additional=True)).lease is not None:
        order.append(claim.lease.task_id)
    assert order == ["high", "mid", "low-old", "low-new", "negative"]
    assert store.get_task("high").priority == 5


def test_a_claim_many_leases_each_task_with_its_own_tokens(store: LeaseStore) -> None:
    store.enqueue_many("q", [{"n": i} for i in range(5)], task_ids=[f"t{i}" for i in range(5)])
    store.enqueue("q", task_id="urgent", priority=9)
    leases = store.claim_many("q", "a", 4, ttl=60)
    assert [lease.task_id for lease in leases][0] == "urgent" and len(leases) == 4
    assert len({lease.token for lease in leases}) == 4 and all(lease.fencing_token == 1 for lease in leases)
    for lease in leases:  # each token works for its own task only
        store.heartbeat(lease)
    rest = store.claim_many("q", "b", 10)
    assert sorted(lease.task_id for lease in rest) == ["t3", "t4"]
    assert store.claim_many("q", "c", 3) == []
    for lease in leases + rest:
        store.release_task(lease, "done")
    report = check_history(store)
    assert report.ok, report.summary()


def test_claim_many_refuses_bad_counts(store: LeaseStore) -> None:
    for bad in (0, -1, 1001, 2.0, True):
        with pytest.raises(InvalidArgument):
            store.claim_many("q", "a", bad)  # type: ignore[arg-type]


def test_a_done_release_keeps_its_result(store: LeaseStore) -> None:
    tid = store.enqueue("q").task_id
    lease = store.claim_task("q", "a").lease
    assert lease is not None
    with pytest.raises(InvalidArgument):
        store.release_task(lease, "failed", "x", result={"no": "results on failure"})
    with pytest.raises(InvalidArgument):
        store.release_task(lease, "done", result=float("nan"))
    store.release_task(lease, "done", result={"summary": "ok", "tokens": 12})
    info = store.get_task(tid)
    assert info.status == "done" and info.result == {"summary": "ok", "tokens": 12}


def test_wait_for_returns_when_the_task_finishes(store: LeaseStore, db_url: str) -> None:
    tid = store.enqueue("q").task_id

    def worker() -> None:
        time.sleep(0.3)
        with LeaseStore(db_url, init=False) as other:
            lease = other.claim_task("q", "sub-agent").lease
            assert lease is not None
            other.release_task(lease, "done", result=[1, 2, 3])

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    info = store.wait_for(tid, timeout=10)
    thread.join()
    assert info.status == "done" and info.result == [1, 2, 3]
    assert time.monotonic() - started < 5


def test_wait_for_times_out_with_a_typed_error(store: LeaseStore) -> None:
    tid = store.enqueue("q").task_id
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as waited:
        store.wait_for(tid, timeout=0.3)
    assert isinstance(waited.value, TimeoutError) and "pending" in str(waited.value)
    assert 0.25 < time.monotonic() - started < 2


def test_a_store_made_by_schema_version_1_is_upgraded(sqlite_url: str) -> None:
    """init-db upgrades in place: the columns and the index of versions 2 and 3, and the queue_settings table, are added."""
    import sqlite3

    LeaseStore(sqlite_url).close()
    conn = sqlite3.connect(sqlite_url, isolation_level=None)
    conn.execute("DROP INDEX ix_tasks_ready")
    conn.execute("ALTER TABLE tasks DROP COLUMN priority")
    conn.execute("ALTER TABLE tasks DROP COLUMN result")
    conn.execute("ALTER TABLE tasks DROP COLUMN lock_delay")
    conn.execute("ALTER TABLE tasks DROP COLUMN held_for")
    conn.execute("DROP TABLE queue_settings")
    conn.execute("CREATE INDEX ix_tasks_pending ON tasks (queue, available_at, created_at) WHERE status = 'pending'")
    conn.execute("UPDATE leasestore_meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with LeaseStore(sqlite_url) as store:
        store.set_queue_settings("q", lock_delay=5.0)
        store.enqueue("q", task_id="t", priority=2)
        assert store.get_task("t").priority == 2
        assert store.get_task("t").lock_delay == 5.0
        indexes = {r[0] for r in store.database.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "ix_tasks_ready" in indexes and "ix_tasks_pending" not in indexes
        assert store.database.query("SELECT value FROM leasestore_meta WHERE key = 'schema_version'")[0][0] == "3"


def _enqueue_later(db_url: str, delay: float, **kwargs: object) -> threading.Thread:
    def later() -> None:
        time.sleep(delay)
        with LeaseStore(db_url, init=False) as other:
            other.enqueue("w", **kwargs)  # type: ignore[arg-type]

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_a_waiting_claim_wakes_when_a_task_arrives(store: LeaseStore, db_url: str) -> None:
    """On PostgreSQL a NOTIFY wakes it; on SQLite the backoff looks again soon."""
    thread = _enqueue_later(db_url, 0.5, task_id="late")
    started = time.monotonic()
    claim = store.claim_task("w", "waiter", wait=10)
    waited = time.monotonic() - started
    thread.join()
    assert claim.lease is not None and claim.lease.task_id == "late"
    assert 0.4 < waited < 2.0


def test_a_waiting_claim_wakes_for_a_delayed_task(store: LeaseStore) -> None:
    """Nothing notifies when a delay runs out: the claim sleeps until then."""
    store.enqueue("w", task_id="delayed", delay=0.6)
    started = time.monotonic()
    claim = store.claim_task("w", "waiter", wait=10)
    assert claim.lease is not None and 0.5 < time.monotonic() - started < 2.0


def test_a_waiting_claim_gives_up_after_its_wait(store: LeaseStore) -> None:
    started = time.monotonic()
    claim = store.claim_task("w", "waiter", wait=0.5)
    assert claim.lease is None and claim.no_task and 0.45 < time.monotonic() - started < 2.0


def test_wait_is_for_queue_claims_only(store: LeaseStore) -> None:
    for bad in (dict(task_id="t"), dict(wait=-1), dict(wait=float("inf"))):
        with pytest.raises(InvalidArgument):
            store.claim_task("w", "a", **{"wait": 1, **bad})  # type: ignore[arg-type]
