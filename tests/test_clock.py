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




# --- SQLite: a writer whose clock is behind the store's time -------------------------------


def test_a_writer_behind_the_store_time_is_refused(sqlite_url: str, face: str) -> None:
    """One process's clock runs a minute behind (a step back, a faked clock): its
    writes are refused with ClockBehind, each refusal is recorded, nothing else
    changes, and the history checker would have seen its events go back in time."""
    from leasestore import ClockBehind

    with LeaseStore(sqlite_url) as ahead:
        ahead.enqueue("q", task_id="t1")
        lease = ahead.claim_task("q", "a", ttl=600).lease
        assert lease is not None
        before = ahead.database.query("SELECT COUNT(*) FROM event_log")[0][0]
    behind = open_store(face, sqlite_url, clock_offset=-60.0)
    try:
        for write in (lambda: behind.enqueue("q", task_id="t2"), lambda: behind.claim_task("q", "b"),
                      lambda: behind.heartbeat(lease), lambda: behind.release_task(lease, "done"),
                      lambda: behind.recover_stale()):
            with pytest.raises(ClockBehind) as refused:
                write()
            assert 59 < refused.value.behind < 61
        assert behind.get_task("t1").status == "leased"  # reads still work
        assert behind.database.query("SELECT COUNT(*) FROM event_log")[0][0] == before
        rows = behind.database.query("SELECT op, outcome, detail FROM lock_events WHERE outcome = 'clock_behind'")
        assert len(rows) == 5 and all(r[0] == "write" for r in rows)
    finally:
        behind.close()


def test_within_the_tolerance_writes_go_on(sqlite_url: str) -> None:
    with LeaseStore(sqlite_url) as now:
        now.enqueue("q", task_id="t1")
        lease = now.claim_task("q", "a", ttl=60).lease
        assert lease is not None
    with LeaseStore(sqlite_url, clock_offset=-2.0) as slightly_behind:
        slightly_behind.heartbeat(lease)
        assert slightly_behind.release_task(lease, "done").result == "done"


def test_a_process_with_its_clock_behind_is_refused(sqlite_url: str) -> None:
    """The same across processes: a separate agent process whose clock is 30 s behind."""
    import subprocess
    import sys

    with LeaseStore(sqlite_url) as store:
        store.enqueue_many("q", [None, None])
        assert store.claim_task("q", "a").lease is not None
    script = ("import sys\nfrom leasestore import LeaseStore, ClockBehind\n"
              "s = LeaseStore(sys.argv[1], init=False, clock_offset=-30.0)\n"
              "try:\n    s.claim_task('q', 'late')\nexcept ClockBehind as e:\n    print('refused', e.behind)\n")
    done = subprocess.run([sys.executable, "-c", script, sqlite_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    word, behind = done.stdout.split()
    assert word == "refused" and 25 < float(behind) <= 30


def test_the_history_checker_sees_a_clock_stepped_back(sqlite_url: str) -> None:
    """With the store's check turned off, a stepped-back writer's events are flagged."""
    from leasestore.history import CLOCK_STEP, check_history

    with LeaseStore(sqlite_url) as store:
        store.enqueue("q", task_id="t1")
    with LeaseStore(sqlite_url, clock_offset=-60.0, clock_tolerance=None) as unchecked:
        unchecked.enqueue("q", task_id="t2")
    with LeaseStore(sqlite_url) as store:
        report = check_history(store, require_drained=False)
    assert [v.invariant for v in report.violations] == [CLOCK_STEP]
    assert report.violations[0].task_id == "t2"


def test_the_exporter_counts_clock_refusals(sqlite_url: str) -> None:
    from leasestore import ClockBehind
    from prometheus_client import CollectorRegistry
    from exporter.collector import StoreCollector

    with LeaseStore(sqlite_url) as store:
        store.enqueue("q")
    with LeaseStore(sqlite_url, clock_offset=-60.0) as behind, pytest.raises(ClockBehind):
        behind.claim_task("q", "b")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(sqlite_url))
    value = registry.get_sample_value("leasestore_lock_events_total", {"outcome": "clock_behind"})
    assert value == 1.0


def test_an_operator_resets_the_store_time_after_a_clock_ran_ahead(sqlite_url: str, face: str) -> None:
    """A writer whose clock ran an hour ahead moved the store's time; once its
    clock is fixed, the others are refused until an operator resets the time."""
    from leasestore import ClockBehind

    with LeaseStore(sqlite_url, clock_offset=3600.0) as ahead:
        ahead.enqueue("q", task_id="t1")
    store = open_store(face, sqlite_url)
    try:
        status = store.clock_status()
        assert status.refused and 3590 < status.behind <= 3600
        with pytest.raises(ClockBehind):
            store.enqueue("q", task_id="t2")
        before = store.reset_clock()
        assert 3590 < before.behind <= 3600
        assert not store.clock_status().refused
        store.enqueue("q", task_id="t2")
    finally:
        store.close()


def test_postgresql_has_one_clock(pg_url: str) -> None:
    with LeaseStore(pg_url) as store:
        store.enqueue("q")
        status = store.clock_status()
        assert status.store_time is None and not status.refused
