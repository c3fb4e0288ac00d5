"""Model-based tests: random operation sequences against the real store and a pure-Python model.

The model time ``now`` moves in steps of two seconds and TTLs are odd whole
seconds (lock-delays even ones), so no lease or lock-delay window ever ends
within a second of a comparison; the store's clock offset
is anchored to the model each time the model moves, so the real time that
passes between operations (milliseconds) only keeps the store's clock rising.
Where the store may pick any of several tasks (ties in queue order), the
model accepts any of the candidates it allows and follows the store's pick.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from conftest import PG_DSN, require
from faces import FACES, open_store
from leasestore import NO_BACKOFF, ClaimStatus, InvalidTransition, Lease, LeaseLost, StaleLeaseToken
from leasestore.history import check_history

OWNERS = ("a", "b", "c")
TTLS = (3.0, 9.0)
ADVANCES = (2, 4, 10)
LOCK_DELAYS = (0, 0, 4)
PRIORITIES = (0, 0, 1, 2)
# Past this much real time at one model instant, the model moves a step on, so
# real drift (an operation stalled on a loaded machine included) stays well
# inside the one-second margin around expiries.
REANCHOR_AFTER = 0.2
STEP = 2


@dataclass
class ModelTask:
    id: str
    max_attempts: int
    status: str = "pending"
    attempts: int = 0
    owner: str | None = None
    fence: int = 0
    token: str | None = None
    expires: float | None = None
    leased_at: float | None = None
    priority: int = 0
    lock_delay: float = 0.0
    held_for: str | None = None  # after an unreleased end: who may lease it before hold_until
    hold_until: float | None = None
    result: Any = None


@dataclass
class Model:
    now: float = 0.0
    tasks: dict[str, ModelTask] = field(default_factory=dict)
    dead_letters: int = 0

    def held(self, t: ModelTask) -> bool:
        return t.status == "leased" and t.expires is not None and t.expires > self.now

    def expired(self, t: ModelTask) -> bool:
        return t.status == "leased" and not self.held(t)

    def valid(self, lease: Lease) -> bool:
        t = self.tasks[lease.task_id]
        return self.held(t) and t.token == lease.token and t.fence == lease.fencing_token

    def end_lease(self, t: ModelTask, status: str, *, keep_owner: bool, holds: bool = False) -> None:
        """``holds``: the lease ended unreleased, so a lock-delay may start."""
        if holds and status == "pending" and t.lock_delay and t.expires is not None \
                and t.expires + t.lock_delay > self.now:
            t.held_for, t.hold_until = t.owner, t.expires + t.lock_delay
        t.status, t.token, t.expires = status, None, None
        if not keep_owner:
            t.owner = None
        if status == "dead":
            self.dead_letters += 1

    def claimable(self, t: ModelTask, owner: str) -> bool:
        """Pending and not held back from ``owner`` by a lock-delay."""
        return t.status == "pending" and (t.hold_until is None or t.hold_until <= self.now or t.held_for == owner)

    def can_take_over(self, t: ModelTask, owner: str) -> bool:
        assert t.expires is not None
        return self.expired(t) and (t.owner == owner or t.expires + t.lock_delay <= self.now)

    def held_back(self, t: ModelTask, owner: str) -> bool:
        if t.status == "pending":
            return not self.claimable(t, owner)
        return (self.expired(t) and t.attempts < t.max_attempts and not self.can_take_over(t, owner))


class StoreMachine(RuleBasedStateMachine):
    url_factory: Any = None  # set per backend; returns (url, cleanup)
    face = "sync"

    def __init__(self) -> None:
        super().__init__()
        self.url, self._cleanup = type(self).url_factory()
        self.store = open_store(type(self).face, self.url, retry_policy=NO_BACKOFF)
        self.model = Model()
        self.leases: list[Lease] = []
        self._base = self.store.now() + 1000.0
        self._anchor()

    # --- clock --------------------------------------------------------------
    def _anchor(self) -> None:
        self._anchored_at = time.monotonic()
        self.store.clock.offset = (self._base + self.model.now) - time.time()

    def _tick(self) -> None:
        """Call before each store operation."""
        if time.monotonic() - self._anchored_at > REANCHOR_AFTER:
            self.model.now += STEP
            self._anchor()

    def _m_time(self, store_time: float) -> float:
        return store_time - self._base

    # --- rules --------------------------------------------------------------
    @rule(max_attempts=st.sampled_from([1, 2, 3]), priority=st.sampled_from(PRIORITIES),
          lock_delay=st.sampled_from(LOCK_DELAYS))
    def enqueue(self, max_attempts: int, priority: int, lock_delay: float) -> None:
        self._tick()
        tid = f"t{len(self.model.tasks)}"
        result = self.store.enqueue("q", {"id": tid}, task_id=tid, max_attempts=max_attempts, priority=priority,
                                    lock_delay=lock_delay)
        assert result.created
        self.model.tasks[tid] = ModelTask(tid, max_attempts, priority=priority, lock_delay=lock_delay)

    @rule(owner=st.sampled_from(OWNERS), ttl=st.sampled_from(TTLS), additional=st.booleans())
    def claim_next(self, owner: str, ttl: float, additional: bool) -> None:
        self._tick()
        m = self.model
        result = self.store.claim_task("q", owner, ttl=ttl, additional=additional)
        own = [t for t in m.tasks.values() if m.held(t) and t.owner == owner]
        pending = [t for t in m.tasks.values() if m.claimable(t, owner)]
        if pending:  # only the highest priority's tasks may be picked
            top = max(t.priority for t in pending)
            pending = [t for t in pending if t.priority == top]
        expired = [t for t in m.tasks.values()
                   if m.expired(t) and t.attempts < t.max_attempts and m.can_take_over(t, owner)]
        held = [t for t in m.tasks.values() if m.held_back(t, owner)]
        if own and not additional:
            assert result.status is ClaimStatus.RESUMED, result
            assert result.task_id in {t.id for t in own}
            self._resume(m.tasks[result.task_id], result.lease, ttl)
        elif pending:
            assert result.status is ClaimStatus.ACQUIRED and not result.lease.took_over, result
            assert result.task_id in {t.id for t in pending}
            self._acquire(m.tasks[result.task_id], result.lease, owner, ttl)
        elif expired:
            assert result.status is ClaimStatus.ACQUIRED and result.lease.took_over, result
            assert result.task_id in {t.id for t in expired}
            self._acquire(m.tasks[result.task_id], result.lease, owner, ttl)
        elif held:
            assert result.status is ClaimStatus.LOCK_DELAYED and result.task_id in {t.id for t in held}, result
            self._check_held_until(m.tasks[result.task_id], result.held_until)
        else:
            assert result.status is ClaimStatus.NO_TASK, result

    def _check_held_until(self, t: ModelTask, held_until: float | None) -> None:
        assert held_until is not None
        until = t.hold_until if t.status == "pending" else (t.expires or 0.0) + t.lock_delay
        assert abs(self._m_time(held_until) - until) < 0.9, (t, held_until)

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data(), owner=st.sampled_from(OWNERS), ttl=st.sampled_from(TTLS))
    def claim_named(self, data: st.DataObject, owner: str, ttl: float) -> None:
        m = self.model
        self._claim_named(m.tasks[data.draw(st.sampled_from(sorted(m.tasks)))], owner, ttl)

    @precondition(lambda self: any(self.model.held(t) for t in self.model.tasks.values()))
    @rule(data=st.data(), ttl=st.sampled_from(TTLS))
    def claim_again_as_holder(self, data: st.DataObject, ttl: float) -> None:
        """An agent restarted with the same identity: it resumes, and its old token must die."""
        held = sorted(t.id for t in self.model.tasks.values() if self.model.held(t))
        t = self.model.tasks[data.draw(st.sampled_from(held))]
        assert t.owner is not None
        self._claim_named(t, t.owner, ttl)

    def _claim_named(self, t: ModelTask, owner: str, ttl: float) -> None:
        m = self.model
        self._tick()
        result = self.store.claim_task(task_id=t.id, owner=owner, ttl=ttl)
        if m.held_back(t, owner):
            assert result.status is ClaimStatus.LOCK_DELAYED, result
            self._check_held_until(t, result.held_until)
        elif t.status == "pending":
            assert result.status is ClaimStatus.ACQUIRED and not result.lease.took_over, result
            self._acquire(t, result.lease, owner, ttl)
        elif m.held(t) and t.owner == owner:
            assert result.status is ClaimStatus.RESUMED, result
            self._resume(t, result.lease, ttl)
        elif m.held(t):
            assert result.status is ClaimStatus.BUSY and result.holder == t.owner, result
        elif m.expired(t) and t.attempts >= t.max_attempts:
            assert result.status is ClaimStatus.NO_TASK, result
            m.end_lease(t, "dead", keep_owner=False)
        elif m.expired(t):
            assert result.status is ClaimStatus.ACQUIRED and result.lease.took_over, result
            self._acquire(t, result.lease, owner, ttl)
        else:
            assert result.status is ClaimStatus.NO_TASK, result

    def _acquire(self, t: ModelTask, lease: Lease, owner: str, ttl: float) -> None:
        assert lease.fencing_token == t.fence + 1 and lease.owner == owner
        t.status, t.owner, t.fence, t.token = "leased", owner, lease.fencing_token, lease.token
        t.held_for = t.hold_until = None
        t.attempts += 1
        t.expires, t.leased_at = self.model.now + ttl, self.model.now
        assert lease.attempt == t.attempts
        self.leases.append(lease)

    def _resume(self, t: ModelTask, lease: Lease, ttl: float) -> None:
        assert lease.fencing_token == t.fence and lease.token != t.token
        t.token = lease.token
        t.expires = max(t.expires or 0.0, self.model.now + ttl)
        self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), with_checkpoint=st.booleans())
    def heartbeat(self, data: st.DataObject, with_checkpoint: bool) -> None:
        lease = data.draw(st.sampled_from(self.leases))
        self._tick()
        t = self.model.tasks[lease.task_id]
        valid, expired_only = self.model.valid(lease), self._expired_only(lease)
        try:
            if with_checkpoint:
                result = self.store.heartbeat(lease, checkpoint={"at": self.model.now})
            else:
                result = self.store.heartbeat(lease)
        except LeaseLost as exc:
            assert not valid, f"valid heartbeat refused: {exc}"
            assert isinstance(exc, StaleLeaseToken) != expired_only, exc
            return
        assert valid, "heartbeat accepted from a lease the model says is gone"
        t.expires = self.model.now + lease.ttl
        assert result.fencing_token == t.fence

    def _expired_only(self, lease: Lease) -> bool:
        """The token is the current one and only time ran out: plain LeaseLost, not StaleLeaseToken."""
        t = self.model.tasks[lease.task_id]
        return t.status == "leased" and t.token == lease.token and t.fence == lease.fencing_token

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), outcome=st.sampled_from(["done", "done with result", "failed"]))
    def release(self, data: st.DataObject, outcome: str) -> None:
        lease = data.draw(st.sampled_from(self.leases))
        self._tick()
        t = self.model.tasks[lease.task_id]
        valid = self.model.valid(lease)
        value = {"by": lease.owner, "fence": lease.fencing_token} if outcome == "done with result" else None
        outcome = outcome.split()[0]
        try:
            result = self.store.release_task(lease, outcome, "boom" if outcome == "failed" else None, result=value)
        except LeaseLost as exc:
            assert not valid, f"valid release refused: {exc}"
            return
        assert valid, "release accepted from a lease the model says is gone"
        if outcome == "done":
            expected = "done"
        elif t.attempts < t.max_attempts:
            expected = "retry_scheduled"
        else:
            expected = "dead_lettered"
        assert result.result.value == expected
        status = {"done": "done", "retry_scheduled": "pending", "dead_lettered": "dead"}[expected]
        self.model.end_lease(t, status, keep_owner=True)
        t.result = value

    @rule()
    def recover(self) -> None:
        self._tick()
        m = self.model
        report = self.store.recover_stale()
        stale = [t for t in m.tasks.values() if m.expired(t)]
        to_dead = [t for t in stale if t.attempts >= t.max_attempts]
        assert (report.recovered, report.dead_lettered, report.failed) == (len(stale) - len(to_dead), len(to_dead), 0)
        for t in stale:
            m.end_lease(t, "dead" if t in to_dead else "pending", keep_owner=False, holds=True)

    @precondition(lambda self: self.model.tasks)
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        m = self.model
        t = m.tasks[data.draw(st.sampled_from(sorted(m.tasks)))]
        self._tick()
        try:
            self.store.revoke_lease(t.id, reason="model")
        except InvalidTransition:
            assert t.status != "leased", t
            return
        assert t.status == "leased", t
        m.end_lease(t, "pending", keep_owner=False, holds=True)

    @rule(seconds=st.sampled_from(ADVANCES))
    def advance_clock(self, seconds: int) -> None:
        self.model.now += seconds
        self._anchor()

    # --- agreement ------------------------------------------------------------
    @invariant()
    def store_matches_model(self) -> None:
        rows = {t.id: t for t in self.store.list_tasks(limit=1000)}
        assert sorted(rows) == sorted(self.model.tasks)
        for tid, m in self.model.tasks.items():
            r = rows[tid]
            got = (r.status, r.owner, r.fencing_token, r.attempts, r.priority, r.result)
            assert got == (m.status, m.owner, m.fence, m.attempts, m.priority, m.result), (tid, got, m)
            if m.status == "pending":
                assert r.held_for == m.held_for, (tid, r, m)
            if m.expires is None:
                assert r.lease_expires_at is None
            else:
                assert abs(self._m_time(r.lease_expires_at) - m.expires) < 0.9, (tid, r, m)
        assert len(self.store.list_dead_letters(limit=1000)) == self.model.dead_letters

    def teardown(self) -> None:
        try:
            report = check_history(self.store, require_drained=False)
            assert report.ok, report.summary()
        finally:
            self.store.close()
            self._cleanup()


def _sqlite_factory() -> tuple[str, Any]:
    folder = tempfile.mkdtemp(prefix="leasestore-model-")
    return os.path.join(folder, "store.db"), lambda: shutil.rmtree(folder, ignore_errors=True)


def _pg_factory() -> tuple[str, Any]:
    schema = "m_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    base = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}?options=-csearch_path%3D{schema}", drop


# Modest budgets: together well under a minute per backend on 2 cores.
BUDGETS = {"sqlite": (80, 30), "postgresql": (30, 30)}


@pytest.mark.slow
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_store_agrees_with_model(backend: str, face: str, pg_available: bool) -> None:
    if backend == "postgresql":
        require(pg_available, "PostgreSQL at " + PG_DSN)
    examples, steps = BUDGETS[backend]
    machine = type(f"StoreMachine_{backend}", (StoreMachine,),
                   {"url_factory": staticmethod(_sqlite_factory if backend == "sqlite" else _pg_factory),
                    "face": face})
    started = time.monotonic()
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], database=None))
    print(f"\nmodel {backend} {face}: {examples} runs x {steps} steps in {time.monotonic() - started:.1f} s")
