"""Time is judged on the store's clock at the moment of the write: exactly at
the lease's expiry on both backends and faces, and after a row lock that had
to be waited for on PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from leasestore import ClaimStatus, LeaseLost, LeaseStore
from tests.conftest import PG_DSN
from tests.faces import open_store

BEFORE = 1e-6  # a microsecond: well above a float's resolution at today's epoch


def _write(store: LeaseStore, op: str, lease: Any) -> Any:
    if op == "heartbeat":
        return store.heartbeat(lease)
    if op == "checkpoint":
        return store.heartbeat(lease, checkpoint={"step": 1})
    return store.release_task(lease, "done")


@pytest.mark.parametrize("op", ["heartbeat", "checkpoint", "release"])
def test_a_holder_write_at_the_instant_of_expiry_is_refused(store: LeaseStore, op: str) -> None:
    """At ``expires_at`` exactly the lease has ended (claims and recovery agree);
    a microsecond before, the same write is accepted."""
    store.enqueue_many("q", [None, None], task_ids=["late", "early"])
    late = store.claim_task(task_id="late", owner="a", ttl=30).lease
    early = store.claim_task(task_id="early", owner="a", ttl=30).lease
    assert late is not None and early is not None
    store.clock.frozen = early.expires_at - BEFORE
    _write(store, op, early)
    store.clock.frozen = late.expires_at
    with pytest.raises(LeaseLost) as refused:
        _write(store, op, late)
    assert refused.value.reason == "expired"
    taken = store.claim_task(task_id="late", owner="b", ttl=30)
    assert taken.status is ClaimStatus.ACQUIRED and taken.lease is not None and taken.lease.took_over


def test_recovery_and_claims_treat_the_instant_of_expiry_as_expired(store: LeaseStore) -> None:
    store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    one = store.claim_task(task_id="t1", owner="a", ttl=30).lease
    assert one is not None
    store.clock.frozen = one.expires_at - BEFORE
    assert store.recover_stale().recovered == 0
    assert store.claim_task(task_id="t1", owner="b").status is ClaimStatus.BUSY
    store.clock.frozen = one.expires_at
    assert store.recover_stale().recovered == 1


def test_revoke_writes_its_lock_row(store: LeaseStore) -> None:
    store.enqueue("q", task_id="t1")
    lease = store.claim_task("q", "a").lease
    assert lease is not None
    store.revoke_lease("t1")
    rows = store.database.query("SELECT op, outcome, owner, fencing_token FROM lock_events "
                                "WHERE task_id = 't1' ORDER BY id")
    assert [tuple(r) for r in rows][-1] == ("revoke", "revoked", "a", 1)


# --- PostgreSQL: a write that waits for a row lock judges time after the wait ----------


def _schema_of(url: str) -> str:
    return url.split("search_path%3D", 1)[1]


def _locking(url: str, task_id: str, after: float, change: str | None) -> tuple[threading.Thread, threading.Event]:
    """Hold ``task_id``'s row lock from another connection, then (after ``after``
    seconds) run ``change`` on it and commit."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(PG_DSN, options=f"-csearch_path={_schema_of(url)}") as conn:
            conn.execute("SELECT id FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
            locked.set()
            time.sleep(after)
            if change is not None:
                conn.execute(change, (task_id,))
            conn.commit()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return thread, locked


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_named_claim_that_waited_for_the_row_sees_it_ready(pg_url: str, face: str) -> None:
    """The row turns pending (available now) while the claim waits for its lock:
    the claim must take it, not answer noTask from a clock read before the wait."""
    store = open_store(face, pg_url)
    try:
        store.enqueue("q", task_id="t1")
        assert store.claim_task(task_id="t1", owner="a", ttl=60).lease is not None
        thread, _ = _locking(pg_url, "t1", 0.5, "UPDATE tasks SET status = 'pending', owner = NULL, "
                             "lease_token_hash = NULL, lease_expires_at = NULL, "
                             "available_at = extract(epoch from clock_timestamp()) WHERE id = %s")
        claim = store.claim_task(task_id="t1", owner="b", ttl=60)
        thread.join()
        assert claim.status is ClaimStatus.ACQUIRED and claim.lease is not None and claim.lease.fencing_token == 2
    finally:
        store.close()


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("op", ["heartbeat", "checkpoint", "release"])
def test_a_holder_write_that_waited_past_expiry_is_refused(pg_url: str, face: str, op: str) -> None:
    """The lease expires while the holder's write waits for the row lock: the
    write must be refused, not judged on a clock read before the wait."""
    store = open_store(face, pg_url)
    try:
        store.enqueue("q", task_id="t1")
        lease = store.claim_task(task_id="t1", owner="a", ttl=0.5).lease
        assert lease is not None
        thread, _ = _locking(pg_url, "t1", 1.0, None)
        with pytest.raises(LeaseLost) as refused:
            _write(store, op, lease)
        thread.join()
        assert refused.value.reason == "expired"
        assert store.get_task("t1").fencing_token == 1
    finally:
        store.close()


