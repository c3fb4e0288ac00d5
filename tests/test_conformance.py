"""The seed's scenarios and the lease rules, as one suite run on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import psycopg
import pytest

from leasestore import (
    ClaimStatus,
    InvalidArgument,
    LeaseLost,
    LeaseStore,
    StaleLeaseToken,
    TaskNotFound,
)
from leasestore.metrics import compute_metrics


def kinds(store: LeaseStore, task_id: str) -> list[str]:
    return [e["kind"] for e in store.events(task_id=task_id, limit=100)]


def test_claim_and_release(store: LeaseStore) -> None:
    """Seed 1: a claimed task is released done, with one audit row per change."""
    tid = store.enqueue("q", {"n": 1}).task_id
    lease = store.claim_task("q", "a").lease
    assert lease is not None and lease.task_id == tid and lease.fencing_token == 1 and lease.payload == {"n": 1}
    assert store.release_task(lease, "done").result == "done"
    assert store.get_task(tid).status == "done"
    assert kinds(store, tid) == ["enqueued", "claimed", "released"]
    assert store.claim_task("q", "a").status is ClaimStatus.NO_TASK


def test_takeover_after_expiry_raises_the_fencing_token(store: LeaseStore) -> None:
    """Seed 3: an expired lease is taken over with a higher fencing token; the old holder is fenced out."""
    tid = store.enqueue("q").task_id
    first = store.claim_task("q", "a", ttl=1).lease
    assert store.claim_task(task_id=tid, owner="b").status is ClaimStatus.BUSY
    store.clock.offset += 5  # the database clock moves past the lease
    second = store.claim_task("q", "b", ttl=30).lease
    assert second is not None and second.took_over and second.fencing_token == first.fencing_token + 1
    before = store.get_task(tid)
    with pytest.raises(StaleLeaseToken) as refused:
        store.heartbeat(first)
    assert refused.value.reason == "taken_over" and refused.value.current_fencing_token == 2
    with pytest.raises(LeaseLost):
        store.release_task(first, "done")
    assert store.get_task(tid) == before
    assert kinds(store, tid) == ["enqueued", "claimed", "taken_over"]
    assert compute_metrics(store, 60)["lockExpired"].value == 1
    assert compute_metrics(store, 60)["lockConflictEvents"].value == 3  # busy + heartbeat + release


def test_duplicate_claim_resumes_with_checkpoint(store: LeaseStore) -> None:
    """Seed 4: the same owner claiming again gets its lease back, not a second one."""
    store.enqueue("q")
    store.enqueue("q")
    lease = store.claim_task("q", "a").lease
    store.heartbeat(lease, checkpoint={"step": 3})
    again = store.claim_task("q", "a")
    assert again.status is ClaimStatus.RESUMED and again.lease.task_id == lease.task_id
    assert again.lease.fencing_token == lease.fencing_token and again.lease.checkpoint == {"step": 3}
    with pytest.raises(StaleLeaseToken) as refused:  # the old incarnation's token stopped working
        store.heartbeat(lease)
    assert refused.value.reason == "invalid_token"
    extra = store.claim_task("q", "a", additional=True)
    assert extra.status is ClaimStatus.ACQUIRED and extra.lease.task_id != lease.task_id
    assert compute_metrics(store, 60)["duplicateSuppressed"].value == 1


def test_stale_recovery_and_retry_limit(store: LeaseStore) -> None:
    """Seed 5 and retries: expired leases are recovered, and dead-lettered at the limit."""
    tid = store.enqueue("q", max_attempts=2).task_id
    store.claim_task("q", "a", ttl=1)
    store.clock.offset += 2
    report = store.recover_stale()
    assert (report.scanned, report.recovered, report.dead_lettered, report.failed) == (1, 1, 0, 0)
    task = store.get_task(tid)
    assert task.status == "pending" and task.attempts == 1
    lease = store.claim_task("q", "b", ttl=1).lease
    assert lease.attempt == 2
    store.clock.offset += 2
    assert store.recover_stale().dead_lettered == 1
    letters = store.list_dead_letters()
    assert [(d.task_id, d.reason) for d in letters] == [(tid, "lease_expired")]
    assert store.recover_stale().scanned == 0
    metrics = compute_metrics(store, 60)
    assert metrics["lockExpired"].value == 2 and metrics["deadLettersOpen"].value == 1
    assert metrics["retryLimitReached"].value == 1 and metrics["staleRecoveryFailureRate"].value == 0


def test_failed_release_retries_then_dead_letters_and_requeues(store: LeaseStore) -> None:
    """Failed releases go back to pending below the limit, then to a dead letter that can be requeued once."""
    tid = store.enqueue("q", max_attempts=2).task_id
    first = store.claim_task("q", "a").lease
    assert store.release_task(first, "failed", "e1").result == "retry_scheduled"
    second = store.claim_task("q", "a").lease
    assert second.attempt == 2 and second.fencing_token == 2
    result = store.release_task(second, "failed", "e2")
    assert result.result == "dead_lettered" and store.get_task(tid).last_error == "e2"
    (letter,) = store.list_dead_letters()
    assert store.requeue_dead_letter(letter.id) == tid
    task = store.get_task(tid)
    assert task.status == "pending" and task.attempts == 0
    assert store.list_dead_letters() == []
    third = store.claim_task("q", "a").lease
    assert third.fencing_token == 3  # never reused, even after a requeue
    assert kinds(store, tid) == ["enqueued", "claimed", "retry_scheduled", "claimed", "dead_lettered",
                                 "requeued", "claimed"]
    metrics = compute_metrics(store, 60)
    assert metrics["retryAttempts"].value == 1 and metrics["retryLimitReached"].value == 1


def test_enqueue_dedupe_key(store: LeaseStore) -> None:
    """A second enqueue with the same key returns the first task."""
    a = store.enqueue("q", {"v": 1}, dedupe_key="k")
    b = store.enqueue("q", {"v": 2}, dedupe_key="k")
    assert a.created and not b.created and a.task_id == b.task_id
    assert store.enqueue("other", dedupe_key="k").created
    assert len(store.list_tasks(queue="q")) == 1


def test_event_log_is_append_only(store: LeaseStore) -> None:
    """The database itself refuses UPDATE and DELETE on event_log."""
    store.enqueue("q")
    if store.backend == "sqlite":
        conn = sqlite3.connect(store.url.database)
        for sql in ("UPDATE event_log SET kind = 'x'", "DELETE FROM event_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        conn.close()
    else:
        dsn = store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for sql in ("UPDATE event_log SET kind = 'x'", "DELETE FROM event_log", "TRUNCATE event_log"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql)
    assert len(store.events()) == 1


def test_bad_input_writes_nothing(store: LeaseStore) -> None:
    """Invalid arguments raise typed errors before anything is written."""
    store.enqueue("q")
    before = len(store.events(limit=1000))
    with pytest.raises(InvalidArgument):
        store.claim_task("q", "")
    for ttl in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument):
            store.claim_task("q", "a", ttl=ttl)
    with pytest.raises(InvalidArgument):
        store.enqueue("q", object())
    with pytest.raises(InvalidArgument):
        store.enqueue("q", {"x": float("nan")})
    with pytest.raises(InvalidArgument):
        store.enqueue("q", "x" * (2 * 1024 * 1024))
    with pytest.raises(InvalidArgument):
        store.enqueue("q\x00")
    with pytest.raises(TaskNotFound):
        store.claim_task(task_id="nope", owner="a")
    assert len(store.events(limit=1000)) == before
    assert store.get_task(store.list_tasks()[0].id).status == "pending"


def test_context_manager_reports_a_lost_lease(store: LeaseStore) -> None:
    """The agent's block learns when its lease is taken, and leaving it raises LeaseLost."""
    tid = store.enqueue("q").task_id
    with pytest.raises(LeaseLost) as lost:
        with store.lease("q", "a", ttl=1, heartbeat_interval=60) as job:
            store.clock.offset += 5
            assert store.claim_task("q", "b").lease.fencing_token == 2
            with pytest.raises(LeaseLost):
                job.checkpoint({"late": True})
            assert job.lost.is_set() and job.lost_reason == "taken_over"
    assert lost.value.reason == "taken_over"
    assert store.get_task(tid).checkpoint is None and store.get_task(tid).owner == "b"


def test_context_manager_releases(store: LeaseStore) -> None:
    """Done on success, failed with the exception text on error."""
    ok = store.enqueue("q").task_id
    with store.lease("q", "a", ttl=5) as job:
        job.checkpoint({"step": 1})
    assert store.get_task(ok).status == "done"
    bad = store.enqueue("q", max_attempts=1).task_id
    with pytest.raises(RuntimeError):
        with store.lease("q", "a", ttl=5):
            raise RuntimeError("tool failed")
    assert store.get_task(bad).status == "dead" and "tool failed" in store.get_task(bad).last_error
    with store.lease("q", "a") as nothing:
        assert nothing is None


def _race(url: str, owner: str, task_id: str, start: mp.synchronize.Event, results: mp.Queue) -> None:
    store = LeaseStore(url, init=False)
    start.wait()
    results.put((owner, store.claim_task(task_id=task_id, owner=owner, ttl=30).status.value))
    store.close()


def test_concurrent_claims_from_processes_have_one_winner(db_url: str) -> None:
    """Seed 2: six processes claim the same task at once; exactly one wins, the rest are busy."""
    store = LeaseStore(db_url)
    tid = store.enqueue("q").task_id
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db_url, f"w{i}", tid, start, results)) for i in range(6)]
    for p in procs:
        p.start()
    start.set()
    outcomes = sorted(results.get(timeout=60)[1] for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["acquired"] + ["busy"] * 5
    assert kinds(store, tid) == ["enqueued", "claimed"]
    assert compute_metrics(store, 60)["lockConflictEvents"].value == 5
    store.close()
