"""Lock-delay and stored queue settings: on both backends, through both faces.

The store's clock is moved with ``store.clock.offset`` so windows of seconds
are crossed without sleeping; the waiting claim is the one test on real time.
"""

from __future__ import annotations

import json
import time

import pytest

from leasestore import ClaimStatus, InvalidArgument, LeaseStore
from leasestore.history import check_history


def lock_outcomes(store: LeaseStore, queue: str = "q") -> dict[str, int]:
    d = store.database.driver
    return dict(store.database.read(lambda now: d.lock_outcome_counts(queue)))


def detail(store: LeaseStore, task_id: str, kind: str) -> dict[str, object]:
    """The detail of the task's first audit row of ``kind``."""
    row = next(e for e in store.events(task_id=task_id, limit=100) if e["kind"] == kind)
    return dict(json.loads(row["detail"]))


def expired_and_recovered(store: LeaseStore, owner: str = "a") -> tuple[str, float]:
    """A task of queue q leased by ``owner`` for 1 s, expired and recovered;
    returns (task id, the old lease's expiry)."""
    tid = store.enqueue("q").task_id
    lease = store.claim_task("q", owner, ttl=1).lease
    assert lease is not None
    store.clock.offset += 2
    assert store.recover_stale().recovered == 1
    return tid, lease.expires_at


def test_a_recovered_task_is_held_from_other_owners_until_the_window_ends(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=10)
    tid, expired_at = expired_and_recovered(store)
    held = store.claim_task("q", "b")
    assert held.status is ClaimStatus.LOCK_DELAYED and held.lease is None and held.lock_delayed
    assert held.task_id == tid and held.held_until == pytest.approx(expired_at + 10, abs=0.01)
    named = store.claim_task(task_id=tid, owner="b")
    assert named.status is ClaimStatus.LOCK_DELAYED and named.held_until == held.held_until
    info = store.get_task(tid)
    assert info.status == "pending" and info.held_for == "a" and info.lock_delay == 10
    assert lock_outcomes(store)["lock_delayed"] == 2
    assert detail(store, tid, "recovered")["held_until"] == pytest.approx(expired_at + 10, abs=0.01)
    store.clock.offset += 8  # expiry + 9: still inside
    assert store.claim_task("q", "b").status is ClaimStatus.LOCK_DELAYED
    store.clock.offset += 1.5
    lease = store.claim_task("q", "b").lease
    assert lease is not None and lease.task_id == tid and lease.fencing_token == 2
    assert store.get_task(tid).held_for is None
    store.release_task(lease, "done")
    report = check_history(store)
    assert report.ok, report.summary()


def test_the_old_owner_may_lease_again_inside_its_window(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=30)
    tid, _ = expired_and_recovered(store, owner="a")
    assert store.claim_task("q", "b").status is ClaimStatus.LOCK_DELAYED
    again = store.claim_task("q", "a")
    assert again.status is ClaimStatus.ACQUIRED and again.lease.task_id == tid and again.lease.fencing_token == 2
    assert store.get_task(tid).held_for is None
    store.release_task(again.lease, "done")
    assert check_history(store).ok


def test_an_expired_lease_is_not_taken_over_inside_the_window(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=5)
    tid = store.enqueue("q").task_id
    first = store.claim_task("q", "a", ttl=1).lease
    store.clock.offset += 3  # expired 2 s ago: inside expiry + 5
    held = store.claim_task("q", "b")
    assert held.status is ClaimStatus.LOCK_DELAYED and held.held_until == pytest.approx(first.expires_at + 5, abs=0.01)
    assert store.claim_task(task_id=tid, owner="b").status is ClaimStatus.LOCK_DELAYED
    assert store.get_task(tid).owner == "a"  # nothing changed hands
    store.clock.offset += 3.5
    taken = store.claim_task("q", "b").lease
    assert taken is not None and taken.took_over and taken.fencing_token == 2
    assert detail(store, tid, "taken_over")["lock_delay"] == 5
    store.release_task(taken, "done")
    assert check_history(store).ok


def test_a_revoked_lease_holds_the_task_until_its_expiry_plus_the_delay(store: LeaseStore) -> None:
    tid = store.enqueue("q", lock_delay=4).task_id
    lease = store.claim_task("q", "a", ttl=10).lease
    store.revoke_lease(tid, reason="operator")
    held = store.claim_task("q", "b")
    # The revoked holder may still believe in its lease until it expires: the window runs from there.
    assert held.status is ClaimStatus.LOCK_DELAYED and held.held_until == pytest.approx(lease.expires_at + 4, abs=0.01)
    store.clock.offset += 13
    assert store.claim_task("q", "b").status is ClaimStatus.LOCK_DELAYED
    store.clock.offset += 2
    assert store.claim_task("q", "b").lease.fencing_token == 2


def test_a_released_lease_starts_no_window(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=60)
    store.enqueue("q", task_id="t")
    lease = store.claim_task("q", "a").lease
    store.release_task(lease, "failed", "flaky")  # retried, but the holder gave it back itself
    again = store.claim_task("q", "b").lease
    assert again is not None and again.task_id == "t" and again.attempt == 2
    assert "lock_delayed" not in lock_outcomes(store)


def test_a_task_overrides_its_queues_lock_delay(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=60)
    tid = store.enqueue("q", lock_delay=0).task_id
    assert store.get_task(tid).lock_delay == 0
    store.claim_task("q", "a", ttl=1)
    store.clock.offset += 2
    store.recover_stale()
    assert store.claim_task("q", "b").lease.task_id == tid


def test_a_held_task_does_not_block_the_queue(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=60)
    held, _ = expired_and_recovered(store)
    free = store.enqueue("q", task_id="free").task_id
    lease = store.claim_task("q", "b").lease
    assert lease is not None and lease.task_id == free
    assert store.claim_task("q", "c").status is ClaimStatus.LOCK_DELAYED
    assert [lease.task_id for lease in store.claim_many("q", "d", 5)] == []
    assert store.claim_task("q", "a").lease.task_id == held


def test_a_waiting_claim_wakes_when_the_window_ends(store: LeaseStore) -> None:
    """Real time: the waiter is woken by the window's end, not by an enqueue."""
    store.set_queue_settings("q", lock_delay=0.6)
    tid = store.enqueue("q").task_id
    store.claim_task("q", "a", ttl=0.2)
    time.sleep(0.3)
    assert store.recover_stale().recovered == 1
    held = store.claim_task("q", "b")
    assert held.status is ClaimStatus.LOCK_DELAYED
    started = time.monotonic()
    got = store.claim_task("q", "b", wait=5)
    waited = time.monotonic() - started
    assert got.lease is not None and got.lease.task_id == tid
    assert waited < 3, f"woke {waited:.2f} s after asking"
    assert store.now() >= held.held_until


# --- queue settings -------------------------------------------------------------------

def test_new_tasks_take_their_queues_settings_unless_they_name_their_own(store: LeaseStore) -> None:
    assert store.queue_settings("q").max_attempts is None and store.list_queue_settings() == []
    settings = store.set_queue_settings("q", max_attempts=5, lock_delay=2.5)
    assert (settings.queue, settings.max_attempts, settings.lock_delay, settings.lease_ttl) == ("q", 5, 2.5, None)
    assert store.queue_settings("q") == settings and store.list_queue_settings() == [settings]
    a = store.get_task(store.enqueue("q").task_id)
    b = store.get_task(store.enqueue("q", max_attempts=1, lock_delay=0).task_id)
    c = store.get_task(store.enqueue("other").task_id)
    assert (a.max_attempts, a.lock_delay) == (5, 2.5)
    assert (b.max_attempts, b.lock_delay) == (1, 0)
    assert (c.max_attempts, c.lock_delay) == (3, 0)
    many = store.enqueue_many("q", [1, 2])
    assert {store.get_task(r.task_id).max_attempts for r in many} == {5}


def test_settings_not_named_are_kept_and_none_restores_the_default(store: LeaseStore) -> None:
    store.set_queue_settings("q", max_attempts=5, lease_ttl=90)
    kept = store.set_queue_settings("q", lock_delay=1)
    assert (kept.max_attempts, kept.lease_ttl, kept.lock_delay) == (5, 90, 1)
    cleared = store.set_queue_settings("q", max_attempts=None)
    assert (cleared.max_attempts, cleared.lease_ttl) == (None, 90)
    assert store.get_task(store.enqueue("q").task_id).max_attempts == 3


def test_a_claim_that_names_no_ttl_takes_the_queues(store: LeaseStore) -> None:
    store.set_queue_settings("q", lease_ttl=120)
    store.enqueue("q")
    store.enqueue("other")
    lease = store.claim_task("q", "a").lease
    assert lease.expires_at - store.now() == pytest.approx(120, abs=2)
    other = store.claim_task("other", "a").lease
    assert other.expires_at - store.now() == pytest.approx(30, abs=2)  # the store's default
    named = store.claim_task("q", "b", ttl=5)
    assert named.status is ClaimStatus.NO_TASK
    store.enqueue("q")
    assert store.claim_task("q", "b", ttl=5).lease.expires_at - store.now() == pytest.approx(5, abs=2)


def test_a_failed_attempt_backs_off_by_its_queues_policy(store: LeaseStore) -> None:
    """The fixture's store retries at once; the queue's backoff replaces that."""
    store.set_queue_settings("q", retry_base=40, retry_cap=50)
    tid = store.enqueue("q").task_id
    store.release_task(store.claim_task("q", "a").lease, "failed", "boom")
    info = store.get_task(tid)
    assert info.status == "pending"
    # Jitter scales the delay by [1 - jitter, 1]: 40 s at most, and more than nothing.
    assert 0 < info.available_at - store.now() <= 40.5
    assert store.claim_task("q", "b").status is ClaimStatus.NO_TASK


def test_a_settings_change_is_audited(store: LeaseStore) -> None:
    store.set_queue_settings("q", lock_delay=3, max_attempts=4)
    store.set_queue_settings("q", lock_delay=None)
    assert lock_outcomes(store)["settings_changed"] == 2
    summary = store.status_summary()
    assert summary["queue_settings"] == [{"queue": "q", "lock_delay": None, "lease_ttl": None, "max_attempts": 4,
                                          "retry_base": None, "retry_cap": None}]


@pytest.mark.parametrize("changes", [
    {"lock_delay": -1}, {"lock_delay": float("nan")}, {"lock_delay": "5"}, {"lock_delay": 10**9},
    {"lease_ttl": 0}, {"lease_ttl": float("inf")}, {"max_attempts": 0}, {"max_attempts": 2.5},
    {"max_attempts": True}, {"retry_base": -1}, {"retry_cap": float("nan")}, {},
])
def test_bad_settings_are_refused_and_write_nothing(store: LeaseStore, changes: dict[str, object]) -> None:
    store.set_queue_settings("q", max_attempts=7)
    before = lock_outcomes(store)
    with pytest.raises(InvalidArgument):
        store.set_queue_settings("q", **changes)  # type: ignore[arg-type]
    assert store.queue_settings("q").max_attempts == 7 and store.queue_settings("q").lock_delay is None
    assert lock_outcomes(store) == before


@pytest.mark.parametrize("queue", ["", "   ", None, 5])
def test_a_bad_queue_name_is_refused(store: LeaseStore, queue: object) -> None:
    with pytest.raises(InvalidArgument):
        store.set_queue_settings(queue, lock_delay=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.queue_settings(queue)  # type: ignore[arg-type]
    assert store.list_queue_settings() == []


def test_a_bad_task_lock_delay_is_refused(store: LeaseStore) -> None:
    for bad in (-0.5, float("nan"), "1", True):
        with pytest.raises(InvalidArgument):
            store.enqueue("q", lock_delay=bad)  # type: ignore[arg-type]
    assert store.list_tasks() == []


def test_the_exporter_counts_lock_delayed_claims(db_url: str) -> None:
    from prometheus_client import CollectorRegistry

    from exporter.collector import StoreCollector

    with LeaseStore(db_url) as store:
        store.set_queue_settings("q", lock_delay=30)
        store.enqueue("q")
        assert store.claim_task("q", "a", ttl=1).lease is not None
        store.clock.offset += 2
        assert store.recover_stale().recovered == 1
        assert store.claim_task("q", "b").status is ClaimStatus.LOCK_DELAYED
    collector = StoreCollector(db_url)
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        assert registry.get_sample_value("leasestore_lock_events_total", {"outcome": "lock_delayed"}) == 1.0
    finally:
        collector.close()
