"""Driver conformance: every method of the ``Driver`` seam, run directly on both backends.

Modelled on river's ``riverdrivertest``: one suite calls each driver method
itself (not through the store's operations) and pins what it returns and
exactly which rows it writes, on SQLite and on PostgreSQL. The store's public
API (``enqueue``, ``claim_task``, ``clock.offset``) is used only to set rows up;
everything asserted comes from the driver or from the tables themselves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from leasestore import LeaseStore, errors
from leasestore.db.audit import release_lock_detail
from leasestore.db.driver import (
    ClaimNextKind,
    ClaimNextRow,
    ClaimParams,
    Driver,
    Event,
    ExtendParams,
    LockEvent,
    ReleaseParams,
    Step,
    Stmt,
)
from leasestore.db.engine import Database
from leasestore.db.queries import Grouping
from leasestore.db.rows import (
    CandidateRow,
    DeadLetterRow,
    ExpiredRow,
    ExtendRow,
    LeaseRow,
    LeaseStateRow,
    PendingRow,
    ReleaseRow,
    TaskRow,
)
from leasestore.models import SCHEMA_VERSION, DeadLetterStatus, EventKind, LockOp, LockOutcome, TaskStatus
from leasestore.ops.common import hash_token
from leasestore.types import Lease

T = TypeVar("T")

TABLES = ("tasks", "event_log", "lock_events", "dead_letters", "alerts")
TASK_FIELDS = ("status", "owner", "lease_token_hash", "fencing_token", "attempts", "max_attempts", "leased_at",
               "lease_expires_at", "available_at", "checkpoint", "last_error", "updated_at")
EVENT_FIELDS = ("ts", "kind", "from_status", "to_status", "owner", "fencing_token", "attempt", "reason", "detail")
LOCK_FIELDS = ("ts", "owner", "op", "outcome", "fencing_token", "detail")

Snapshot = dict[str, list[tuple[Any, ...]]]


@dataclass
class Env:
    """A fresh store's database and driver, with helpers to run steps and read tables."""

    store: LeaseStore
    db: Database
    d: Driver

    def run(self, op: Callable[[], Step[T]]) -> T:
        return self.db.run(op)

    def write(self, body: Callable[[float], Step[T]]) -> T:
        return self.db.write(body)

    def read(self, body: Callable[[float], Step[T]]) -> T:
        return self.db.read(body)

    def snapshot(self) -> Snapshot:
        """Every row of every table the drivers write, in id order."""
        return {t: [tuple(r) for r in self.db.query(f"SELECT * FROM {t} ORDER BY id")] for t in TABLES}

    def task_row(self, task_id: str) -> dict[str, Any]:
        rows = self.db.query(f"SELECT {', '.join(TASK_FIELDS)} FROM tasks WHERE id = :id", {"id": task_id})
        assert len(rows) == 1
        return dict(zip(TASK_FIELDS, rows[0]))

    def events_of(self, task_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(f"SELECT {', '.join(EVENT_FIELDS)} FROM event_log WHERE task_id = :id ORDER BY id",
                             {"id": task_id})
        return [dict(zip(EVENT_FIELDS, r)) for r in rows]

    def locks_of(self, task_id: str) -> list[dict[str, Any]]:
        rows = self.db.query(f"SELECT {', '.join(LOCK_FIELDS)} FROM lock_events WHERE task_id = :id ORDER BY id",
                             {"id": task_id})
        return [dict(zip(LOCK_FIELDS, r)) for r in rows]

    def event_ids(self) -> list[int]:
        return [int(r[0]) for r in self.db.query("SELECT id FROM event_log ORDER BY id")]

    def lock_ids(self) -> list[int]:
        return [int(r[0]) for r in self.db.query("SELECT id FROM lock_events ORDER BY id")]

    def lease(self, queue: str = "q", owner: str = "a", *, ttl: float = 30.0, task_id: str | None = None) -> Lease:
        """A lease taken through the store (set-up only)."""
        result = self.store.claim_task(queue if task_id is None else None, owner, task_id=task_id, ttl=ttl,
                                       additional=True)
        assert result.lease is not None, result
        return result.lease

    def claim_next(self, owner: str, token: str, *, queue: str = "q", ttl: float = 30.0,
                   resume: bool = True) -> ClaimNextRow:
        return self.run(lambda: self.d.claim_next(ClaimParams(queue, owner, hash_token(token), ttl, resume)))


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    store = LeaseStore(db_url)
    try:
        yield Env(store, store.database, store.database.driver)
    finally:
        store.close()


def done_params(lease: Lease, *, token: str | None = None, fence: int | None = None) -> ReleaseParams:
    return ReleaseParams(lease.task_id, hash_token(lease.token if token is None else token),
                         lease.fencing_token if fence is None else fence, lease.attempt, TaskStatus.DONE, 0.0,
                         None, EventKind.RELEASED, None, release_lock_detail("done"), None)


def retry_params(lease: Lease, delay: float, error: str) -> ReleaseParams:
    return ReleaseParams(lease.task_id, hash_token(lease.token), lease.fencing_token, lease.attempt,
                         TaskStatus.PENDING, delay, error, EventKind.RETRY_SCHEDULED, "failed",
                         release_lock_detail("retry_scheduled"), None)


def dead_params(lease: Lease, error: str) -> ReleaseParams:
    return ReleaseParams(lease.task_id, hash_token(lease.token), lease.fencing_token, lease.attempt,
                         TaskStatus.DEAD, 0.0, error, EventKind.DEAD_LETTERED, "retry_limit",
                         release_lock_detail("dead_lettered"), "retry_limit")


def extend_params(lease: Lease, ttl: float, *, token: str | None = None, fence: int | None = None,
                  checkpoint: str | None = None, checkpointing: bool = False) -> ExtendParams:
    return ExtendParams(lease.task_id, hash_token(lease.token if token is None else token),
                        lease.fencing_token if fence is None else fence, ttl, checkpoint, checkpointing)


# --- statements, transactions, the clock ------------------------------------------------


def test_statement_helpers_run_named_parameters(env: Env) -> None:
    """one/all/count/run take ``:name`` parameters (and a literal ``%``) on every backend."""
    d = env.d
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    env.store.enqueue("r", task_id="t3")
    row = env.run(lambda: d.one("SELECT CAST(:x AS TEXT) || '%'", {"x": "50"}))
    assert row is not None and tuple(row) == ("50%",)
    assert env.run(lambda: d.one("SELECT id FROM tasks WHERE id = :id", {"id": "nope"})) is None
    ids = env.run(lambda: d.all("SELECT id FROM tasks WHERE queue = :queue ORDER BY id", {"queue": "q"}))
    assert [tuple(r) for r in ids] == [("t1",), ("t2",)]
    changed = env.write(lambda now: d.count("UPDATE tasks SET payload = :p WHERE queue = :queue",
                                            {"p": "1", "queue": "q"}))
    assert changed == 2
    assert env.write(lambda now: d.run("UPDATE tasks SET payload = :p WHERE id = :id", {"p": "2", "id": "t3"})) is None
    assert [tuple(r) for r in env.db.query("SELECT id, payload FROM tasks ORDER BY id")] == [
        ("t1", "1"), ("t2", "1"), ("t3", "2")]


def test_write_commits_and_a_failing_body_leaves_nothing(env: Env) -> None:
    """write() commits body(now); a body that raises is rolled back whole."""
    d = env.d

    def body(now: float) -> Step[float]:
        yield from d.insert_lock_event(now, LockEvent("t1", "q", "a", LockOp.CLAIM, LockOutcome.BUSY, 1))
        return now

    now = env.write(body)
    assert [r["ts"] for r in env.locks_of("t1")] == [now]
    before = env.snapshot()

    class Boom(Exception):
        pass

    def failing(now: float) -> Step[None]:
        yield from d.insert_lock_event(now, LockEvent("t1", "q", "a", LockOp.CLAIM, LockOutcome.BUSY, 2))
        raise Boom

    with pytest.raises(Boom):
        env.write(failing)
    assert env.snapshot() == before
    assert env.write(body) > now  # the connection is usable afterwards


def test_read_runs_body_in_a_snapshot(env: Env) -> None:
    """read() hands body the database clock and returns its result."""
    d = env.d
    env.store.enqueue("q", task_id="t1")

    def body(now: float) -> Step[tuple[float, TaskRow | None]]:
        row = yield from d.task("t1")
        return now, row

    before = time.time()
    now, row = env.read(body)
    assert row is not None and row.id == "t1"
    assert before - 5 < now < time.time() + 5


def test_refused_commits_the_conflict_row_then_raises(env: Env) -> None:
    """refused(body) commits what body wrote, then raises the error body returned."""
    d = env.d

    def body(now: float) -> Step[errors.LeaseLost]:
        yield from d.insert_lock_event(now, LockEvent("t1", "q", "a", LockOp.HEARTBEAT, LockOutcome.CONFLICT, 1,
                                                      {"reason": "expired"}))
        return errors.LeaseLost("t1", "expired", 1, 1)

    with pytest.raises(errors.LeaseLost) as raised:
        env.run(lambda: d.refused(body))
    assert raised.value.reason == "expired"
    assert [(r["op"], r["outcome"], r["detail"]) for r in env.locks_of("t1")] == [
        ("heartbeat", "conflict", '{"reason":"expired"}')]


def test_savepoint_rollback_restores_the_row(env: Env) -> None:
    """A row changed after savepoint() and rolled back to it is unchanged; release_savepoint() keeps changes."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    lease = env.lease()
    before = env.run(lambda: d.task("t1"))

    def body(now: float) -> Step[tuple[bool, TaskRow | None, TaskRow | None]]:
        yield from d.savepoint()
        changed = yield from d.end_lease(now, "t1", lease.fencing_token, TaskStatus.PENDING, "x")
        inside = yield from d.task("t1")
        yield from d.rollback_to_savepoint()
        after = yield from d.task("t1")
        yield from d.savepoint()  # the same name again: the rollback released it
        yield from d.insert_lock_event(now, LockEvent("t1", "q", None, LockOp.RECOVER, LockOutcome.RECOVER_FAILED, 1))
        yield from d.release_savepoint()
        return changed, inside, after

    changed, inside, after = env.write(body)
    assert changed and inside is not None and inside.status == TaskStatus.PENDING
    assert after == before
    assert env.run(lambda: d.task("t1")) == before
    assert env.locks_of("t1")[-1]["outcome"] == "recover_failed"


def test_now_is_the_host_clock_plus_the_offset(env: Env) -> None:
    """now() is within a few seconds of time.time() on this host, plus the store's clock offset."""
    d = env.d
    start = time.time()
    now = env.run(d.now)
    assert start - 5 < now < time.time() + 5
    env.store.clock.offset = 1000.0
    moved = env.run(d.now)
    assert abs(moved - time.time() - 1000.0) < 5
    assert env.write(lambda now: d.now()) == pytest.approx(time.time() + 1000.0, abs=5)


def test_write_gate_and_is_disconnect(env: Env) -> None:
    """write_gate() is an enterable context that leaves writes possible; a plain error is no disconnect."""
    d = env.d
    with d.write_gate():
        pass
    env.store.enqueue("q", task_id="t1")
    assert d.is_disconnect(ValueError("x")) is False
    assert d.translate_error(ValueError("x")) is None
    assert d.translate_error(RuntimeError("locked")) is None


def test_duplicate_task_id_raises_duplicate_key(env: Env) -> None:
    """translate_error: inserting an existing task id (or dedupe key) raises DuplicateKey and writes nothing."""
    d = env.d
    env.write(lambda now: d.insert_task(now, "t1", "q", None, 3, 0.0, "k1", 0, 0.0))
    before = env.snapshot()
    with pytest.raises(errors.DuplicateKey):
        env.write(lambda now: d.insert_task(now, "t1", "q", None, 3, 0.0, None, 0, 0.0))
    with pytest.raises(errors.DuplicateKey):
        env.write(lambda now: d.insert_task(now, "t2", "q", None, 3, 0.0, "k1", 0, 0.0))
    assert env.snapshot() == before
    env.write(lambda now: d.insert_task(now, "t2", "q", None, 3, 0.0, "k1-other", 0, 0.0))
    assert env.run(lambda: d.task("t2")) is not None


def test_missing_table_raises_schema_not_initialized(env: Env) -> None:
    """translate_error: a statement on a missing table raises SchemaNotInitialized."""
    with pytest.raises(errors.SchemaNotInitialized):
        env.db.query("SELECT id FROM no_such_table")
    with pytest.raises(errors.SchemaNotInitialized):
        env.run(lambda: env.d.one("SELECT id FROM no_such_table WHERE id = :id", {"id": "x"}))


def test_event_log_is_append_only(env: Env) -> None:
    """schema_extras' triggers refuse UPDATE and DELETE on event_log; translate_error makes it InvalidTransition."""
    env.store.enqueue("q", task_id="t1")
    before = env.snapshot()
    with pytest.raises(errors.InvalidTransition):
        env.db.query("UPDATE event_log SET kind = 'x'")
    with pytest.raises(errors.InvalidTransition):
        env.db.query("DELETE FROM event_log")
    assert env.snapshot() == before


def test_schema_version_and_extras(env: Env) -> None:
    """stored_schema_version reads what store_schema_version wrote; schema_extras and lock_schema re-run cleanly."""
    d = env.d
    assert env.read(lambda now: d.stored_schema_version()) == SCHEMA_VERSION
    extras = d.schema_extras()
    assert extras and all(isinstance(s, str) for s in extras)

    def rerun(now: float) -> Step[None]:
        yield from d.lock_schema()
        for statement in extras:
            yield Stmt(statement)

    env.write(rerun)
    env.write(lambda now: d.store_schema_version(SCHEMA_VERSION + 6, update=True))
    assert env.read(lambda now: d.stored_schema_version()) == SCHEMA_VERSION + 6
    env.write(lambda now: d.store_schema_version(SCHEMA_VERSION, update=True))
    assert env.read(lambda now: d.stored_schema_version()) == SCHEMA_VERSION
    with pytest.raises(errors.DuplicateKey):
        env.write(lambda now: d.store_schema_version(SCHEMA_VERSION, update=False))


# --- enqueue and audit rows ----------------------------------------------------------------


def test_insert_task_and_lookups(env: Env) -> None:
    """insert_task writes a pending row available after its delay; task and task_by_dedupe_key read it back."""
    d = env.d
    now = env.write(lambda now: _then(d.insert_task(now, "t1", "q", '{"n":1}', 5, 30.0, "k1", 7, 0.0), now))
    row = env.run(lambda: d.task("t1"))
    available = pytest.approx(now + 30.0)
    assert row == TaskRow("t1", "q", "pending", 0, 5, None, 0, None, available,  # type: ignore[arg-type]
                          '{"n":1}', None, None, "k1", now, now, 7, None, 0.0, None)
    assert env.run(lambda: d.task_by_dedupe_key("q", "k1")) == row
    assert env.run(lambda: d.task_by_dedupe_key("other", "k1")) is None
    assert env.run(lambda: d.task_by_dedupe_key("q", "k2")) is None
    assert env.run(lambda: d.task("nope")) is None
    assert env.events_of("t1") == []  # insert_task writes no audit row itself


def _then(step: Step[Any], value: T) -> Step[T]:
    yield from step
    return value


def test_insert_event_and_lock_event_write_exact_rows(env: Env) -> None:
    """insert_event/insert_lock_event write every field as given, detail as compact JSON (empty → NULL)."""
    d = env.d

    def body(now: float) -> Step[None]:
        yield from d.insert_event(123.5, Event("t1", "q", EventKind.REVOKED, "leased", "pending", owner="a",
                                               fence=3, attempt=2, reason="revoked", detail={"note": "x", "n": 1}))
        yield from d.insert_event(124.0, Event("t1", "q", EventKind.ENQUEUED, None, "pending", detail={}))
        yield from d.insert_lock_event(125.0, LockEvent("t1", "q", "a", LockOp.REVOKE, LockOutcome.REVOKED, 3,
                                                        {"k": [1, 2]}))
        yield from d.insert_lock_event(126.0, LockEvent(None, None, None, LockOp.RECOVER, LockOutcome.RECOVER_FAILED,
                                                        None))

    env.write(body)
    assert env.events_of("t1") == [
        {"ts": 123.5, "kind": "revoked", "from_status": "leased", "to_status": "pending", "owner": "a",
         "fencing_token": 3, "attempt": 2, "reason": "revoked", "detail": '{"note":"x","n":1}'},
        {"ts": 124.0, "kind": "enqueued", "from_status": None, "to_status": "pending", "owner": None,
         "fencing_token": None, "attempt": None, "reason": None, "detail": None},
    ]
    assert env.locks_of("t1") == [{"ts": 125.0, "owner": "a", "op": "revoke", "outcome": "revoked",
                                   "fencing_token": 3, "detail": '{"k":[1,2]}'}]
    rows = env.db.query("SELECT ts, task_id, queue, owner, op, outcome, fencing_token, detail FROM lock_events "
                        "WHERE task_id IS NULL")
    assert [tuple(r) for r in rows] == [(126.0, None, None, None, "recover", "recover_failed", None, None)]


# --- claims -----------------------------------------------------------------------------------


def test_claim_next_acquires_with_audit_rows(env: Env) -> None:
    """claim_next ACQUIRED: the lease is returned and the task, claimed event and acquired lock row are written."""
    env.store.enqueue("q", {"n": 1}, task_id="t1")
    got = env.claim_next("a", "tok", ttl=30.0)
    assert got.kind is ClaimNextKind.ACQUIRED and got.task_id == "t1" and got.lease is not None
    lease = got.lease
    row = env.task_row("t1")
    assert lease == LeaseRow("t1", "q", "a", 1, row["lease_expires_at"], 1, 3, '{"n":1}', None)
    assert row["status"] == "leased" and row["owner"] == "a" and row["lease_token_hash"] == hash_token("tok")
    assert row["attempts"] == 1 and row["updated_at"] == row["leased_at"]
    assert row["lease_expires_at"] == pytest.approx(row["leased_at"] + 30.0, abs=1e-6)
    assert env.events_of("t1")[1:] == [
        {"ts": row["leased_at"], "kind": "claimed", "from_status": "pending", "to_status": "leased", "owner": "a",
         "fencing_token": 1, "attempt": 1, "reason": None, "detail": None}]
    assert env.locks_of("t1") == [{"ts": row["leased_at"], "owner": "a", "op": "claim", "outcome": "acquired",
                                   "fencing_token": 1, "detail": None}]


def test_claim_next_reports_mine_only_with_resume(env: Env) -> None:
    """claim_next MINE for an owner's unexpired lease only with resume=True (nothing written); else it leases on."""
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    assert env.claim_next("a", "tok1").task_id == "t1"
    before = env.snapshot()
    mine = env.claim_next("a", "tok2", resume=True)
    assert mine == ClaimNextRow(ClaimNextKind.MINE, lease=None, task_id="t1")
    assert env.snapshot() == before  # not even the token hash changed
    other = env.claim_next("a", "tok3", resume=False)
    assert other.kind is ClaimNextKind.ACQUIRED and other.task_id == "t2"
    assert other.lease is not None and other.lease.owner == "a"
    before = env.snapshot()
    assert env.claim_next("a", "tok4", resume=False).kind is ClaimNextKind.NONE
    assert env.claim_next("b", "tok5", resume=True).kind is ClaimNextKind.NONE  # another owner's lease is not MINE
    assert env.snapshot() == before


def test_claim_next_mine_names_the_lease_own_lease_names(env: Env) -> None:
    """claim_next MINE names the owner's oldest lease, the one own_lease (and so the full claim path) resumes."""
    d = env.d
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    env.lease(task_id="t1")
    env.lease(task_id="t2")
    # Renew t1's token (leased_at unchanged), which moves its row version after t2's.
    assert env.write(lambda now: d.resume(now, "t1", "a", hash_token("again"), 30.0)) is not None
    own = env.read(lambda now: d.own_lease("a", "q", now))
    assert own == "t1"
    assert env.claim_next("a", "tok", resume=True) == ClaimNextRow(ClaimNextKind.MINE, task_id=own)


def test_claim_next_reports_expired_below_the_retry_limit(env: Env) -> None:
    """claim_next EXPIRED when only an expired lease below its retry limit exists, writing nothing."""
    env.store.enqueue("q", task_id="t1", max_attempts=3)
    env.lease(ttl=1.0)
    env.store.clock.offset += 5
    before = env.snapshot()
    assert env.claim_next("b", "tok").kind is ClaimNextKind.EXPIRED
    assert env.claim_next("a", "tok", resume=True).kind is ClaimNextKind.EXPIRED  # an expired own lease is not MINE
    assert env.snapshot() == before


def test_claim_next_none_at_the_retry_limit(env: Env) -> None:
    """claim_next NONE when the only expired lease is at its retry limit, writing nothing."""
    env.store.enqueue("q", task_id="t1", max_attempts=1)
    env.lease(ttl=1.0)
    env.store.clock.offset += 5
    before = env.snapshot()
    assert env.claim_next("b", "tok") == ClaimNextRow(ClaimNextKind.NONE)
    assert env.snapshot() == before


def test_claim_next_none_and_future_tasks(env: Env) -> None:
    """claim_next NONE on an empty queue and for a task not yet available; claimed once available_at passes."""
    assert env.claim_next("a", "tok") == ClaimNextRow(ClaimNextKind.NONE)
    env.store.enqueue("other", task_id="o1")
    env.store.enqueue("q", task_id="t1", delay=60.0)
    before = env.snapshot()
    assert env.claim_next("a", "tok") == ClaimNextRow(ClaimNextKind.NONE)
    assert env.snapshot() == before
    env.store.clock.offset += 61
    got = env.claim_next("a", "tok")
    assert got.kind is ClaimNextKind.ACQUIRED and got.task_id == "t1"


def test_claim_next_takes_the_earliest_available(env: Env) -> None:
    """claim_next leases by available_at, then created_at."""
    env.store.enqueue("q", task_id="late", delay=5.0)
    env.store.enqueue("q", task_id="first")
    env.store.enqueue("q", task_id="second")
    env.store.clock.offset += 10
    assert [env.claim_next(f"o{i}", "tok").task_id for i in range(3)] == ["first", "second", "late"]


def test_own_lease(env: Env) -> None:
    """own_lease: the owner's unexpired lease in the queue, else None."""
    d = env.d
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    env.store.enqueue("r", task_id="r1")
    env.lease(owner="a", task_id="t1", ttl=30.0)
    env.lease(owner="b", task_id="t2", ttl=1.0)

    def body(now: float) -> Step[list[str | None]]:
        found = []
        for owner, queue in (("a", "q"), ("b", "q"), ("c", "q"), ("a", "r")):
            found.append((yield from d.own_lease(owner, queue, now)))
        return found

    assert env.read(body) == ["t1", "t2", None, None]
    env.store.clock.offset += 5
    assert env.read(body) == ["t1", None, None, None]


def test_next_pending(env: Env) -> None:
    """next_pending: the ready pending task with the earliest available_at and its fence (it locks: run in a write)."""
    d = env.d
    env.store.enqueue("q", task_id="late", delay=60.0)
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    nxt: Callable[[], PendingRow | None] = lambda: env.write(lambda now: d.next_pending("q", "w", now))
    assert nxt() == PendingRow("t1", 0)
    lease = env.lease(task_id="t1")
    assert nxt() == PendingRow("t2", 0)
    env.store.release_task(lease, "failed", retry_in=0.0)  # t1 pending again, fence 1, available now
    assert nxt() == PendingRow("t2", 0)  # t2 has been available longer
    env.lease(task_id="t2")
    assert nxt() == PendingRow("t1", 1)
    env.lease(task_id="t1")
    assert nxt() is None
    assert env.write(lambda now: d.next_pending("other", "w", now)) is None


def test_expired_candidate(env: Env) -> None:
    """expired_candidate: the earliest-expired lease below its retry limit, else None (it locks: run in a write)."""
    d = env.d
    env.store.enqueue("q", task_id="limit", max_attempts=1)
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    env.lease(owner="x", task_id="limit", ttl=1.0)
    env.lease(owner="a", task_id="t1", ttl=3.0)
    env.lease(owner="b", task_id="t2", ttl=2.0)
    cand: Callable[[], CandidateRow | None] = lambda: env.write(lambda now: d.expired_candidate("q", "w", now))
    assert cand() is None  # nothing expired yet
    env.store.clock.offset += 10
    expires = env.task_row("t2")["lease_expires_at"]
    assert cand() == CandidateRow("t2", "b", 1, expires)
    assert env.write(lambda now: d.expired_candidate("other", "w", now)) is None


def test_task_for_update(env: Env) -> None:
    """task_for_update: the whole task row inside a write transaction, None when missing."""
    d = env.d
    env.store.enqueue("q", task_id="t1")

    def body(now: float) -> Step[tuple[TaskRow | None, TaskRow | None]]:
        found = yield from d.task_for_update("t1")
        missing = yield from d.task_for_update("nope")
        return found, missing

    found, missing = env.write(body)
    assert found is not None and found == env.run(lambda: d.task("t1"))
    assert missing is None


def test_acquire(env: Env) -> None:
    """acquire: a fenced lease on the expected status; a fence or status mismatch gives None; no audit rows written."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    h = hash_token("tok")

    def body(now: float) -> Step[tuple[float, LeaseRow | None, LeaseRow | None, LeaseRow | None]]:
        wrong_fence = yield from d.acquire(now, "t1", 5, TaskStatus.PENDING, "a", h, 30.0)
        wrong_status = yield from d.acquire(now, "t1", 0, TaskStatus.LEASED, "a", h, 30.0)
        lease = yield from d.acquire(now, "t1", 0, TaskStatus.PENDING, "a", h, 30.0)
        return now, wrong_fence, wrong_status, lease

    now, wrong_fence, wrong_status, lease = env.write(body)
    assert wrong_fence is None and wrong_status is None
    assert lease == LeaseRow("t1", "q", "a", 1, pytest.approx(now + 30.0), 1, 3, None, None)  # type: ignore[arg-type]
    row = env.task_row("t1")
    assert (row["status"], row["lease_token_hash"], row["leased_at"]) == ("leased", h, now)
    assert [e["kind"] for e in env.events_of("t1")] == ["enqueued"] and env.locks_of("t1") == []

    # Taking over an expired lease: from 'leased', on its current fence.
    env.store.clock.offset += 60
    h2 = hash_token("tok2")
    took = env.write(lambda now: d.acquire(now, "t1", 1, TaskStatus.LEASED, "b", h2, 30.0))
    assert took is not None and (took.owner, took.fencing_token, took.attempt) == ("b", 2, 2)
    assert env.write(lambda now: d.acquire(now, "t1", 1, TaskStatus.LEASED, "c", h2, 30.0)) is None


def test_resume(env: Env) -> None:
    """resume: the owner's unexpired lease gets a fresh token hash, same fence, expiry max(old, now+ttl); else None."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    lease = env.lease(ttl=30.0)

    def body(now: float) -> Step[tuple[float, LeaseRow | None, LeaseRow | None, LeaseRow | None]]:
        other = yield from d.resume(now, "t1", "b", hash_token("x"), 30.0)
        short = yield from d.resume(now, "t1", "a", hash_token("short"), 5.0)
        long = yield from d.resume(now, "t1", "a", hash_token("long"), 100.0)
        return now, other, short, long

    now, other, short, long = env.write(body)
    assert other is None
    assert short == LeaseRow("t1", "q", "a", 1, lease.expires_at, 1, 3, None, None)
    assert long == LeaseRow("t1", "q", "a", 1, pytest.approx(now + 100.0), 1, 3, None, None)  # type: ignore[arg-type]
    assert env.task_row("t1")["lease_token_hash"] == hash_token("long")
    assert [r["outcome"] for r in env.locks_of("t1")] == ["acquired"]  # resume writes no audit row itself
    env.store.clock.offset += 200
    assert env.write(lambda now: d.resume(now, "t1", "a", hash_token("late"), 30.0)) is None


# --- holder writes ---------------------------------------------------------------------------------


def test_extend_without_checkpoint(env: Env) -> None:
    """extend without checkpointing: returns the new expiry, writes an extended lock row, keeps the checkpoint."""
    env.store.enqueue("q", task_id="t1")
    lease = env.lease(ttl=30.0)
    env.store.heartbeat(lease, checkpoint={"step": 1})
    events_before = env.events_of("t1")
    env.store.clock.offset += 10
    got = env.run(lambda: env.d.extend(extend_params(lease, 60.0)))
    row = env.task_row("t1")
    assert got == ExtendRow("q", "a", 1, row["lease_expires_at"])
    assert row["lease_expires_at"] == pytest.approx(row["updated_at"] + 60.0, abs=1e-6)
    assert row["checkpoint"] == '{"step":1}'
    assert env.events_of("t1") == events_before
    assert env.locks_of("t1")[-1] == {"ts": row["updated_at"], "owner": "a", "op": "heartbeat",
                                      "outcome": "extended", "fencing_token": 1, "detail": None}


def test_extend_with_checkpoint(env: Env) -> None:
    """extend with checkpointing: stores the checkpoint (None clears it) and writes a checkpointed event."""
    env.store.enqueue("q", task_id="t1")
    lease = env.lease(ttl=30.0)
    got = env.run(lambda: env.d.extend(extend_params(lease, 45.0, checkpoint='{"step":2}', checkpointing=True)))
    row = env.task_row("t1")
    assert got is not None and got.expires_at == row["lease_expires_at"]
    assert got.expires_at == pytest.approx(row["updated_at"] + 45.0, abs=1e-6)
    assert row["checkpoint"] == '{"step":2}'
    assert env.events_of("t1")[-1] == {"ts": row["updated_at"], "kind": "checkpointed", "from_status": "leased",
                                       "to_status": "leased", "owner": "a", "fencing_token": 1, "attempt": None,
                                       "reason": None, "detail": None}
    assert [(r["op"], r["outcome"], r["ts"]) for r in env.locks_of("t1")][-1] == (
        "heartbeat", "extended", row["updated_at"])
    assert env.run(lambda: env.d.extend(extend_params(lease, 45.0, checkpoint=None, checkpointing=True))) is not None
    assert env.task_row("t1")["checkpoint"] is None
    assert [e["kind"] for e in env.events_of("t1")] == ["enqueued", "claimed", "checkpointed", "checkpointed"]


def test_extend_refused_writes_nothing(env: Env) -> None:
    """extend with a wrong token hash or fence, an expired or ended lease, or no task: None and no row written."""
    d = env.d
    env.store.enqueue_many("q", [None] * 4, task_ids=["t1", "t2", "t3", "t4"])
    live = env.lease(task_id="t1", ttl=300.0)
    short = env.lease(task_id="t2", ttl=1.0)
    ended = env.lease(task_id="t3", ttl=300.0)
    env.store.release_task(ended, "done")
    env.store.clock.offset += 5
    cases = {
        "wrong token": extend_params(live, 30.0, token="not-the-token"),
        "wrong fence": extend_params(live, 30.0, fence=live.fencing_token + 1),
        "expired": extend_params(short, 30.0),
        "released": extend_params(ended, 30.0),
        "checkpoint, wrong token": extend_params(live, 30.0, token="x", checkpoint="1", checkpointing=True),
        "missing": ExtendParams("nope", hash_token(live.token), 1, 30.0, None, False),
    }
    before = env.snapshot()
    for name, params in cases.items():
        assert env.run(lambda: d.extend(params)) is None, name
        assert env.snapshot() == before, name


def test_release_done(env: Env) -> None:
    """release done: the task is done (owner kept, lease cleared) with a released event and a released lock row."""
    env.store.enqueue("q", task_id="t1")
    lease = env.lease()
    got = env.run(lambda: env.d.release(done_params(lease)))
    row = env.task_row("t1")
    assert got == ReleaseRow("q", "a", row["updated_at"], None)
    assert (row["status"], row["owner"], row["lease_token_hash"], row["lease_expires_at"], row["last_error"]) == (
        "done", "a", None, None, None)
    assert row["available_at"] == row["updated_at"]
    assert env.events_of("t1")[-1] == {"ts": row["updated_at"], "kind": "released", "from_status": "leased",
                                       "to_status": "done", "owner": "a", "fencing_token": 1, "attempt": 1,
                                       "reason": None, "detail": None}
    lock = env.locks_of("t1")[-1]
    assert (lock["ts"], lock["owner"], lock["op"], lock["outcome"], lock["fencing_token"]) == (
        row["updated_at"], "a", "release", "released", 1)


def test_release_lock_row_carries_the_given_detail(env: Env) -> None:
    """release writes ReleaseParams.lock_outcome_detail as the lock row's detail (done → {"outcome":"done"})."""
    env.store.enqueue_many("q", [None, None], task_ids=["t1", "t2"])
    done = env.lease(task_id="t1")
    retry = env.lease(task_id="t2")
    assert env.run(lambda: env.d.release(retry_params(retry, 0.0, "boom"))) is not None
    assert env.locks_of("t2")[-1]["detail"] == release_lock_detail("retry_scheduled")
    assert env.run(lambda: env.d.release(done_params(done))) is not None
    assert env.locks_of("t1")[-1]["detail"] == release_lock_detail("done") == '{"outcome":"done"}'


def test_release_retry_with_delay(env: Env) -> None:
    """release retry: pending at now+delay with the error kept, and a retry_scheduled event with {"retry_at": ...}."""
    env.store.enqueue("q", task_id="t1")
    lease = env.lease()
    got = env.run(lambda: env.d.release(retry_params(lease, 30.0, "boom")))
    row = env.task_row("t1")
    assert got == ReleaseRow("q", "a", row["available_at"], None)
    assert row["available_at"] == pytest.approx(row["updated_at"] + 30.0, abs=1e-6)
    assert (row["status"], row["lease_token_hash"], row["lease_expires_at"], row["last_error"], row["attempts"]) == (
        "pending", None, None, "boom", 1)
    event = env.events_of("t1")[-1]
    detail = event.pop("detail")
    assert event == {"ts": row["updated_at"], "kind": "retry_scheduled", "from_status": "leased",
                     "to_status": "pending", "owner": "a", "fencing_token": 1, "attempt": 1, "reason": "failed"}
    assert json.loads(detail) == {"retry_at": got.available_at}
    assert env.locks_of("t1")[-1]["outcome"] == "released"
    # Not claimable before the delay is over.
    assert env.claim_next("b", "tok").kind is ClaimNextKind.NONE
    env.store.clock.offset += 31
    assert env.claim_next("b", "tok").task_id == "t1"


def test_release_dead_letter(env: Env) -> None:
    """release dead letter: a dead_letters row, its id in the returned row and in the event detail."""
    env.store.enqueue("q", task_id="t1", max_attempts=1)
    lease = env.lease()
    got = env.run(lambda: env.d.release(dead_params(lease, "boom")))
    row = env.task_row("t1")
    assert got is not None and got.dead_letter_id is not None
    assert got == ReleaseRow("q", "a", row["updated_at"], got.dead_letter_id)
    assert (row["status"], row["last_error"]) == ("dead", "boom")
    dead = env.db.query("SELECT id, task_id, queue, reason, attempts, last_error, status, created_at, closed_at, note "
                        "FROM dead_letters")
    assert [tuple(r) for r in dead] == [(got.dead_letter_id, "t1", "q", "retry_limit", 1, "boom", "open",
                                         row["updated_at"], None, None)]
    event = env.events_of("t1")[-1]
    assert (event["kind"], event["from_status"], event["to_status"], event["reason"], event["attempt"]) == (
        "dead_lettered", "leased", "dead", "retry_limit", 1)
    assert json.loads(event["detail"]) == {"dead_letter_id": got.dead_letter_id}
    assert env.locks_of("t1")[-1]["outcome"] == "released"


def test_release_refused_writes_nothing(env: Env) -> None:
    """release with a wrong token hash or fence, an expired or ended lease, or no task: None and no row written."""
    d = env.d
    env.store.enqueue_many("q", [None] * 3, task_ids=["t1", "t2", "t3"])
    live = env.lease(task_id="t1", ttl=300.0)
    short = env.lease(task_id="t2", ttl=1.0)
    ended = env.lease(task_id="t3", ttl=300.0)
    env.store.release_task(ended, "done")
    env.store.clock.offset += 5
    cases = {
        "wrong token": done_params(live, token="not-the-token"),
        "wrong fence": done_params(live, fence=live.fencing_token + 1),
        "wrong token, dead letter": ReleaseParams("t1", hash_token("x"), 1, 1, TaskStatus.DEAD, 0.0, "e",
                                                  EventKind.DEAD_LETTERED, "retry_limit",
                                                  release_lock_detail("dead_lettered"), "retry_limit"),
        "expired": retry_params(short, 10.0, "late"),
        "released": done_params(ended),
        "missing": ReleaseParams("nope", hash_token(live.token), 1, 1, TaskStatus.DONE, 0.0, None,
                                 EventKind.RELEASED, None, release_lock_detail("done"), None),
    }
    before = env.snapshot()
    for name, params in cases.items():
        assert env.run(lambda: d.release(params)) is None, name
        assert env.snapshot() == before, name


def test_attempts(env: Env) -> None:
    """attempts: (attempts, max_attempts, queue) of a task, None when missing."""
    d = env.d
    env.store.enqueue("q", task_id="t1", max_attempts=4)
    assert env.run(lambda: d.attempts("t1")) == (0, 4, "q")
    env.lease()
    assert env.run(lambda: d.attempts("t1")) == (1, 4, "q")
    assert env.run(lambda: d.attempts("nope")) is None


def test_lease_state(env: Env) -> None:
    """lease_state: queue, status, fence, token hash, expiry and owner, for a refusal's diagnosis."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    assert env.run(lambda: d.lease_state("t1")) == LeaseStateRow("q", "pending", 0, None, None, None)
    lease = env.lease()
    assert env.run(lambda: d.lease_state("t1")) == LeaseStateRow("q", "leased", 1, hash_token(lease.token),
                                                                 lease.expires_at, "a")
    env.store.release_task(lease, "done")
    assert env.run(lambda: d.lease_state("t1")) == LeaseStateRow("q", "done", 1, None, None, "a")
    assert env.run(lambda: d.lease_state("nope")) is None


def test_lease_end_event(env: Env) -> None:
    """lease_end_event: (kind, reason) of the first event that ended the lease with that fence or a later one."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    first = env.lease()
    assert env.run(lambda: d.lease_end_event("t1", 1)) is None  # claimed is not an end
    env.store.release_task(first, "failed", "boom", retry_in=0.0)
    assert env.run(lambda: d.lease_end_event("t1", 1)) == ("retry_scheduled", "failed")
    second = env.lease(ttl=1.0)
    assert env.run(lambda: d.lease_end_event("t1", 2)) is None
    env.store.clock.offset += 5
    env.lease(owner="b")  # takes the expired lease over
    assert env.run(lambda: d.lease_end_event("t1", second.fencing_token)) == ("taken_over", "lease_expired")
    assert env.run(lambda: d.lease_end_event("t1", 1)) == ("retry_scheduled", "failed")
    assert env.run(lambda: d.lease_end_event("nope", 1)) is None


# --- ending leases without their token -------------------------------------------------------------


def test_expired_batch(env: Env) -> None:
    """expired_batch: expired leases (any attempt count) in expiry order, at most ``limit``."""
    d = env.d
    env.store.enqueue_many("q", [None] * 3, task_ids=["t1", "t2", "t3"])
    env.store.enqueue("r", task_id="r1", max_attempts=1)
    env.lease(owner="a", task_id="t1", ttl=3.0)
    env.lease(owner="b", task_id="r1", ttl=1.0)
    env.lease(owner="c", task_id="t2", ttl=2.0)
    env.lease(owner="d", task_id="t3", ttl=300.0)
    assert env.write(lambda now: d.expired_batch(now, 10)) == []
    env.store.clock.offset += 10
    exp = {tid: env.task_row(tid)["lease_expires_at"] for tid in ("t1", "t2", "r1")}
    everything = env.write(lambda now: d.expired_batch(now, 10))
    assert everything == [ExpiredRow("r1", "r", "b", 1, 1, 1, exp["r1"], 0.0),
                          ExpiredRow("t2", "q", "c", 1, 1, 3, exp["t2"], 0.0),
                          ExpiredRow("t1", "q", "a", 1, 1, 3, exp["t1"], 0.0)]
    assert env.write(lambda now: d.expired_batch(now, 2)) == everything[:2]


def test_end_lease(env: Env) -> None:
    """end_lease: True and the lease cleared on a matching fence; False on a fence mismatch or a task not leased."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    env.lease()
    before = env.snapshot()
    assert env.write(lambda now: d.end_lease(now, "t1", 2, TaskStatus.PENDING, "x")) is False
    assert env.snapshot() == before

    def body(now: float) -> Step[tuple[float, bool]]:
        ok = yield from d.end_lease(now, "t1", 1, TaskStatus.PENDING, "lease expired")
        return now, ok

    now, ok = env.write(body)
    assert ok
    row = env.task_row("t1")
    assert row == {**row, "status": "pending", "owner": None, "lease_token_hash": None, "lease_expires_at": None,
                   "available_at": now, "last_error": "lease expired", "updated_at": now, "fencing_token": 1,
                   "attempts": 1}
    assert [e["kind"] for e in env.events_of("t1")] == ["enqueued", "claimed"]  # no audit row of its own
    assert env.write(lambda now: d.end_lease(now, "t1", 1, TaskStatus.DEAD, "x")) is False


# --- dead letters ------------------------------------------------------------------------------------


def test_dead_letter_lifecycle(env: Env) -> None:
    """insert_dead_letter / open_dead_letter / dead_letters / requeue_task / close_dead_letter, end to end."""
    d = env.d
    env.store.enqueue("q", task_id="t1", max_attempts=1)
    env.lease()

    def kill(now: float) -> Step[tuple[float, int, int]]:
        assert (yield from d.end_lease(now, "t1", 1, TaskStatus.DEAD, "gone"))
        first = yield from d.insert_dead_letter(now, "t1", "q", "lease_expired", 1, "gone")
        second = yield from d.insert_dead_letter(now, "t1", "q", "retry_limit", 1, None)
        return now, first, second

    now, first, second = env.write(kill)
    assert second > first
    open_row = DeadLetterRow(first, "t1", "q", "lease_expired", 1, "gone", "open", now)
    assert env.read(lambda n: d.open_dead_letter(first)) == open_row
    assert env.read(lambda n: d.open_dead_letter(second + 100)) is None
    assert env.read(lambda n: d.dead_letters(DeadLetterStatus.OPEN, 10)) == [
        open_row, DeadLetterRow(second, "t1", "q", "retry_limit", 1, None, "open", now)]
    assert env.read(lambda n: d.dead_letters(DeadLetterStatus.OPEN, 1)) == [open_row]
    assert env.read(lambda n: d.dead_letters(DeadLetterStatus.REQUEUED, 10)) == []

    def requeue(now: float) -> Step[tuple[float, bool]]:
        ok = yield from d.requeue_task(now, "t1")
        yield from d.close_dead_letter(now, first, DeadLetterStatus.REQUEUED, None)
        yield from d.close_dead_letter(now, second, DeadLetterStatus.RESOLVED, "by hand")
        return now, ok

    later, ok = env.write(requeue)
    assert ok
    row = env.task_row("t1")
    assert (row["status"], row["attempts"], row["available_at"], row["updated_at"], row["last_error"],
            row["fencing_token"]) == ("pending", 0, later, later, None, 1)
    assert env.write(lambda now: d.requeue_task(now, "t1")) is False  # only a dead task
    assert env.read(lambda n: d.open_dead_letter(first)) is None
    assert env.read(lambda n: d.dead_letters(DeadLetterStatus.REQUEUED, 10)) == [
        DeadLetterRow(first, "t1", "q", "lease_expired", 1, "gone", "requeued", now)]
    closed_sql = "SELECT id, status, closed_at, note FROM dead_letters ORDER BY id"
    closed = [tuple(r) for r in env.db.query(closed_sql)]
    assert closed == [(first, "requeued", later, None), (second, "resolved", later, "by hand")]
    env.write(lambda now: d.close_dead_letter(now, first, DeadLetterStatus.RESOLVED, "again"))  # only an open one
    assert [tuple(r) for r in env.db.query(closed_sql)] == closed


# --- reads ----------------------------------------------------------------------------------------------


def test_task_and_tasks(env: Env) -> None:
    """task reads one row; tasks filters by queue and status, in creation order, up to ``limit``."""
    d = env.d
    env.store.enqueue_many("q", [1, 2], task_ids=["a1", "a2"])
    env.store.enqueue("r", 3, task_id="b1")
    env.lease(task_id="a1")
    ids: Callable[[str | None, str | None, int], list[str]] = lambda queue, status, limit: [
        r.id for r in env.read(lambda now: d.tasks(queue, status, limit))]
    assert ids(None, None, 10) == ["a1", "a2", "b1"]
    assert ids("q", None, 10) == ["a1", "a2"]
    assert ids(None, "leased", 10) == ["a1"]
    assert ids("q", "pending", 10) == ["a2"]
    assert ids(None, None, 1) == ["a1"]
    assert ids("zzz", None, 10) == [] and ids(None, "dead", 10) == []
    a1 = env.run(lambda: d.task("a1"))
    assert a1 == env.read(lambda now: d.tasks("q", "leased", 10))[0]
    assert a1 is not None and (a1.status, a1.owner, a1.fencing_token, a1.attempts, a1.payload) == (
        "leased", "a", 1, 1, "1")
    assert a1.lease_expires_at == env.task_row("a1")["lease_expires_at"]


def test_task_counts(env: Env) -> None:
    """task_counts: (queue, status, count), ordered by queue then status."""
    env.store.enqueue_many("q", [None, None, None])
    env.store.enqueue("r")
    env.lease()
    assert env.read(lambda now: env.d.task_counts()) == [("q", "leased", 1), ("q", "pending", 2), ("r", "pending", 1)]


def test_active_leases(env: Env) -> None:
    """active_leases: (id, queue, owner, fence, attempts, leased_at, expires_at) of leased tasks, oldest first."""
    env.store.enqueue("q", task_id="t1")
    env.store.enqueue("r", task_id="t2")
    env.store.enqueue("q", task_id="t3")
    env.lease(owner="a", task_id="t1", ttl=30.0)
    env.lease(owner="b", task_id="t2", ttl=60.0)
    rows = [tuple(r) for r in env.read(lambda now: env.d.active_leases(10))]
    want = [(tid, queue, owner, 1, 1, env.task_row(tid)["leased_at"], env.task_row(tid)["lease_expires_at"])
            for tid, queue, owner in (("t1", "q", "a"), ("t2", "r", "b"))]
    assert rows == want
    assert [tuple(r) for r in env.read(lambda now: env.d.active_leases(1))] == want[:1]


def test_events_newest_and_after(env: Env) -> None:
    """events: the newest ``limit`` or the oldest after ``after_id`` (of one task, if given), always oldest first."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    env.store.enqueue("q", task_id="t2")
    env.lease(task_id="t1")
    env.lease(task_id="t2")
    ids = env.event_ids()
    assert len(ids) == 4

    def got(task_id: str | None, after: int, limit: int, newest: bool) -> list[tuple[int, str, str]]:
        return [(e.id, e.task_id, e.kind) for e in env.read(lambda now: d.events(task_id, after, limit, newest))]

    assert got(None, 0, 2, True) == [(ids[2], "t1", "claimed"), (ids[3], "t2", "claimed")]
    assert got(None, 0, 2, False) == [(ids[0], "t1", "enqueued"), (ids[1], "t2", "enqueued")]
    assert got(None, ids[0], 2, False) == [(ids[1], "t2", "enqueued"), (ids[2], "t1", "claimed")]
    assert got(None, ids[1], 1, True) == [(ids[3], "t2", "claimed")]
    assert got("t1", 0, 10, True) == [(ids[0], "t1", "enqueued"), (ids[2], "t1", "claimed")]
    assert got("t1", ids[0], 10, False) == [(ids[2], "t1", "claimed")]
    assert got("nope", 0, 10, True) == [] and got(None, ids[3], 10, False) == []
    full = env.read(lambda now: d.events("t1", 0, 1, True))[0]
    assert full.as_dict() == {"id": ids[2], "ts": env.task_row("t1")["leased_at"], "task_id": "t1", "queue": "q",
                              "kind": "claimed", "from_status": "pending", "to_status": "leased", "owner": "a",
                              "fencing_token": 1, "attempt": 1, "reason": None,
                              "detail": '{"named":true}'}  # env.lease names its task


def test_events_page(env: Env) -> None:
    """events_page: the whole log (or one queue's) in id order after ``after_id``, up to ``limit``."""
    d = env.d
    env.store.enqueue("q", task_id="t1")
    env.store.enqueue("r", task_id="t2")
    env.store.enqueue("q", task_id="t3")
    ids = env.event_ids()

    def page(queue: str | None, after: int, limit: int) -> list[int]:
        return [e.id for e in env.read(lambda now: d.events_page(queue, after, limit))]

    assert page(None, 0, 10) == ids
    assert page(None, ids[0], 1) == [ids[1]]
    assert page("q", 0, 10) == [ids[0], ids[2]]
    assert page("q", ids[0], 10) == [ids[2]]
    assert page("r", ids[1], 10) == []


def test_task_status_page(env: Env) -> None:
    """task_status_page: (id, status, has result) after ``after_id`` in id order, optionally of one queue."""
    d = env.d
    env.store.enqueue_many("q", [None] * 3, task_ids=["c", "a", "b"])
    env.store.enqueue("r", task_id="d")
    env.lease(task_id="b")
    env.store.release_task(env.store.claim_task(task_id="c", owner="x").lease, "done", result={"ok": 1})

    def page(queue: str | None, after: str, limit: int) -> list[tuple[str, str, bool]]:
        return env.read(lambda now: d.task_status_page(queue, after, limit))

    assert page(None, "", 2) == [("a", "pending", False), ("b", "leased", False)]
    assert page(None, "b", 10) == [("c", "done", True), ("d", "pending", False)]
    assert page("q", "", 10) == [("a", "pending", False), ("b", "leased", False), ("c", "done", True)]
    assert page("r", "d", 10) == []


def _put_locks(env: Env, rows: list[tuple[float, str, str]]) -> None:
    """Lock rows (ts, queue, outcome) written through insert_lock_event."""
    def body(now: float) -> Step[None]:
        for ts, queue, outcome in rows:
            yield from env.d.insert_lock_event(ts, LockEvent(f"{queue}-t", queue, "a", LockOp.CLAIM,
                                                             LockOutcome(outcome), 1))
    env.write(body)


def _put_events(env: Env, rows: list[tuple[float, str, str, str | None]]) -> None:
    """Event rows (ts, queue, kind, reason) written through insert_event."""
    def body(now: float) -> Step[None]:
        for ts, queue, kind, reason in rows:
            yield from env.d.insert_event(ts, Event(f"{queue}-t", queue, EventKind(kind), "leased", "pending",
                                                    reason=reason))
    env.write(body)


def test_lock_outcome_counts(env: Env) -> None:
    """lock_outcome_counts: (outcome, count) over all lock rows, or one queue's."""
    _put_locks(env, [(1.0, "q", "acquired"), (2.0, "q", "acquired"), (3.0, "q", "busy"), (4.0, "r", "busy"),
                     (5.0, "r", "conflict")])

    def counts(queue: str | None) -> dict[str, int]:
        return dict(env.read(lambda now: env.d.lock_outcome_counts(queue)))

    assert counts(None) == {"acquired": 2, "busy": 2, "conflict": 1}
    assert counts("q") == {"acquired": 2, "busy": 1}
    assert counts("zzz") == {}


# --- metric reads -----------------------------------------------------------------------------------------


def test_windowed_event_counts(env: Env) -> None:
    """windowed_event_counts: (kind, reason, count) of the metric kinds with ts >= since."""
    _put_events(env, [(100.0, "q", "retry_scheduled", "failed"), (200.0, "q", "retry_scheduled", "failed"),
                      (200.0, "q", "dead_lettered", "retry_limit"), (250.0, "r", "dead_lettered", "lease_expired"),
                      (250.0, "q", "claimed", None), (300.0, "q", "taken_over", "lease_expired"),
                      (300.0, "q", "recovered", "lease_expired"), (301.0, "q", "recovered", "lease_expired")])
    got = env.read(lambda now: env.d.windowed_event_counts(200.0))
    assert sorted(got) == sorted([("retry_scheduled", "failed", 1), ("dead_lettered", "retry_limit", 1),
                                  ("dead_lettered", "lease_expired", 1), ("taken_over", "lease_expired", 1),
                                  ("recovered", "lease_expired", 2)])
    assert env.read(lambda now: env.d.windowed_event_counts(302.0)) == []


def test_windowed_lock_counts(env: Env) -> None:
    """windowed_lock_counts: (outcome, count) of the metric outcomes with ts >= since."""
    _put_locks(env, [(100.0, "q", "busy"), (200.0, "q", "busy"), (200.0, "q", "duplicate"), (200.0, "q", "conflict"),
                     (200.0, "q", "acquired"), (210.0, "q", "recovered"), (210.0, "q", "recover_dead_lettered"),
                     (220.0, "r", "recover_failed"), (220.0, "r", "recover_failed"), (230.0, "q", "released")])
    got = env.read(lambda now: env.d.windowed_lock_counts(200.0))
    assert sorted(got) == [("busy", 1), ("conflict", 1), ("duplicate", 1), ("recover_dead_lettered", 1),
                           ("recover_failed", 2), ("recovered", 1)]
    assert env.read(lambda now: env.d.windowed_lock_counts(221.0)) == []


def test_open_dead_letter_count(env: Env) -> None:
    """open_dead_letter_count: dead letters still open."""
    d = env.d
    assert env.read(lambda now: d.open_dead_letter_count()) == 0

    def body(now: float) -> Step[int]:
        ids = []
        for i in range(3):
            ids.append((yield from d.insert_dead_letter(now, f"t{i}", "q", "retry_limit", 1, None)))
        yield from d.close_dead_letter(now, ids[0], DeadLetterStatus.RESOLVED, None)
        return len(ids)

    env.write(body)
    assert env.read(lambda now: d.open_dead_letter_count()) == 2


def test_event_kinds_in_order(env: Env) -> None:
    """event_kinds_in_order: (ts, kind, reason) of every event in id order, not ts order."""
    _put_events(env, [(300.0, "q", "recovered", "lease_expired"), (100.0, "q", "claimed", None),
                      (200.0, "r", "retry_scheduled", "failed")])
    assert env.read(lambda now: env.d.event_kinds_in_order()) == [
        (300.0, "recovered", "lease_expired"), (100.0, "claimed", None), (200.0, "retry_scheduled", "failed")]


def test_lock_outcomes_since(env: Env) -> None:
    """lock_outcomes_since: (ts, outcome) of every lock row with ts >= since."""
    _put_locks(env, [(100.0, "q", "busy"), (200.0, "q", "acquired"), (300.0, "r", "conflict")])
    assert sorted(env.read(lambda now: env.d.lock_outcomes_since(200.0))) == [(200.0, "acquired"),
                                                                             (300.0, "conflict")]
    assert env.read(lambda now: env.d.lock_outcomes_since(301.0)) == []


def test_leases_by_queue(env: Env) -> None:
    """leases_by_queue: (queue, active leases, oldest leased_at) per queue with leases."""
    env.store.enqueue_many("q", [None] * 3, task_ids=["q1", "q2", "q3"])
    env.store.enqueue("r", task_id="r1")
    env.store.enqueue("s", task_id="s1")
    for tid in ("q1", "r1", "q2"):
        env.lease(task_id=tid)
    done = env.lease(task_id="s1")
    env.store.release_task(done, "done")
    got = sorted(env.read(lambda now: env.d.leases_by_queue()))
    assert got == [("q", 2, env.task_row("q1")["leased_at"]), ("r", 1, env.task_row("r1")["leased_at"])]


def test_ready_pending_by_queue(env: Env) -> None:
    """ready_pending_by_queue: (queue, oldest available_at) of pending tasks already available."""
    d = env.d
    env.store.enqueue("q", task_id="q1")
    env.store.enqueue("q", task_id="q2")
    env.store.enqueue("q", task_id="q3", delay=60.0)
    env.store.enqueue("r", task_id="r1", delay=60.0)
    env.store.enqueue("s", task_id="s1")
    env.lease(task_id="s1")
    assert env.read(lambda now: d.ready_pending_by_queue(now)) == [("q", env.task_row("q1")["available_at"])]
    env.store.clock.offset += 61
    got = sorted(env.read(lambda now: d.ready_pending_by_queue(now)))
    assert got == [("q", env.task_row("q1")["available_at"]), ("r", env.task_row("r1")["available_at"])]


@pytest.mark.parametrize("grouping", ["event_kind", "event_transition", "lock_outcome"])
def test_first_unsettled_id(env: Env, grouping: Grouping) -> None:
    """first_unsettled_id: the smallest id after ``after`` with ts > cutoff, in the grouping's table."""
    if grouping == "lock_outcome":
        _put_locks(env, [(100.0, "q", "busy"), (200.0, "q", "busy"), (300.0, "q", "acquired")])
        ids = env.lock_ids()
    else:
        _put_events(env, [(100.0, "q", "claimed", None), (200.0, "q", "claimed", None),
                          (300.0, "q", "recovered", None)])
        ids = env.event_ids()

    def first(after: int, cutoff: float) -> int | None:
        return env.read(lambda now: env.d.first_unsettled_id(grouping, after, cutoff))

    assert first(0, 0.0) == ids[0]
    assert first(0, 150.0) == ids[1]
    assert first(ids[1], 150.0) == ids[2]
    assert first(0, 300.0) is None  # strictly later than the cutoff
    assert first(ids[2], 0.0) is None


def test_grouped_counts(env: Env) -> None:
    """grouped_counts: (*group, count, max id) of rows with after < id < before, for every grouping."""
    d = env.d
    _put_events(env, [(1.0, "q", "claimed", None), (2.0, "q", "claimed", None), (3.0, "r", "claimed", None),
                      (4.0, "q", "recovered", "lease_expired"), (5.0, "q", "claimed", None)])
    _put_locks(env, [(1.0, "q", "busy"), (2.0, "q", "acquired"), (3.0, "q", "busy"), (4.0, "q", "busy")])
    e = env.event_ids()
    lk = env.lock_ids()

    def grouped(grouping: Grouping, after: int, before: int) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in env.read(lambda now: d.grouped_counts(grouping, after, before)))

    # Events e[0] and e[4] lie outside (after, before); the window is e[1..3].
    assert grouped("event_kind", e[0], e[4]) == [("claimed", 2, e[2]), ("recovered", 1, e[3])]
    assert grouped("event_transition", e[0], e[4]) == [("q", "leased", "pending", 2, e[3]),
                                                       ("r", "leased", "pending", 1, e[2])]
    assert grouped("lock_outcome", lk[0], lk[3] + 1) == [("acquired", 1, lk[1]), ("busy", 2, lk[3])]
    assert grouped("event_kind", e[4], e[4] + 100) == []


def test_insert_alert(env: Env) -> None:
    """insert_alert writes one alerts row as given."""
    env.write(lambda now: env.d.insert_alert(42.0, "lockConflictEvents", 7.0, 5.0, 15.0))
    rows = env.db.query("SELECT ts, metric, value, threshold, window_minutes FROM alerts")
    assert [tuple(r) for r in rows] == [(42.0, "lockConflictEvents", 7.0, 5.0, 15.0)]
