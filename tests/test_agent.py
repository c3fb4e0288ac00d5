"""The agent context manager really heartbeats, notices a lost lease and fences itself.

Every test runs on a real SQLite file and a real PostgreSQL (``db_url``), with
real time: no mocks. Each proves one promise of ``store.lease(...)``:

1. a block that outlives several TTLs keeps its lease (the background heartbeat runs);
2. a heartbeat that cannot succeed sets ``job.lost`` within about one interval;
3. the handle stops trusting its lease at its own local deadline;
4. heartbeats come every third of the TTL (counted in ``lock_events``);
5. an exception in the block releases the task ``failed`` and propagates.

The store-facing steps are small sync/async function pairs and the checks are
shared, so the ``test_async_*`` twins run the same scenarios natively on
``leasestore.aio`` under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from typing import Any

import psycopg
import pytest

from leasestore import NO_BACKOFF, ClaimResult, LeaseLost, LeaseStore, aio

QUEUE = "agent-tests"
OWNER = "agent-7"
RIVAL = "agent-9"
# Scheduling noise allowed on top of one heartbeat interval (a loaded 2-core machine).
SLACK = 0.6
# Past the 2 s TTL, within the 5 s clock tolerance: a rival whose clock says the
# lease has expired, not one whose clock the store would refuse.
TAKEOVER_JUMP = 3.0
END_HOWS = ["revoked", "taken_over"]


@pytest.fixture
def store(db_url: str) -> Iterator[LeaseStore]:
    """The blocking store only. conftest's ``store`` also drives the asyncio face
    through blocking calls, where no heartbeat task can run while the block sleeps;
    here each face's own context manager is tested natively (``test_async_*``)."""
    s = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    yield s
    s.close()


@pytest.fixture
def rival(db_url: str) -> Iterator[LeaseStore]:
    """A second store object on the same database: another agent or an operator."""
    s = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    yield s
    s.close()


# --- store-facing steps: one sync/async pair each ----------------------------------
def enqueue(store: LeaseStore, max_attempts: int = 3) -> str:
    return store.enqueue(QUEUE, {"mail": "welcome"}, max_attempts=max_attempts).task_id


async def aenqueue(store: Any, max_attempts: int = 3) -> str:
    return str((await store.enqueue(QUEUE, {"mail": "welcome"}, max_attempts=max_attempts)).task_id)


def probe(rival: LeaseStore, task_id: str) -> tuple[ClaimResult, int]:
    """Another owner's claim of the task, and the task's fencing token after it."""
    return rival.claim_task(task_id=task_id, owner=RIVAL, ttl=30.0), rival.get_task(task_id).fencing_token


async def aprobe(rival: Any, task_id: str) -> tuple[ClaimResult, int]:
    claim = await rival.claim_task(task_id=task_id, owner=RIVAL, ttl=30.0)
    return claim, (await rival.get_task(task_id)).fencing_token


def end_lease(rival: LeaseStore, task_id: str, how: str) -> None:
    """End the holder's lease behind its back: an operator's revoke, or a takeover
    by a rival whose clock says the lease has expired."""
    if how == "revoked":
        rival.revoke_lease(task_id)
    else:
        check_took_over(rival.claim_task(task_id=task_id, owner=RIVAL, ttl=30.0))


async def aend_lease(rival: Any, task_id: str, how: str) -> None:
    if how == "revoked":
        await rival.revoke_lease(task_id)
    else:
        check_took_over(await rival.claim_task(task_id=task_id, owner=RIVAL, ttl=30.0))


def count_heartbeats(db_url: str, task_id: str) -> int:
    """Successful heartbeats of the task, read straight from ``lock_events``."""
    sql = ("SELECT COUNT(*) FROM lock_events WHERE op = 'heartbeat' AND outcome = 'extended' "
           "AND task_id = ")
    if "://" not in db_url:  # the sqlite_url fixture is a plain file path
        with closing(sqlite3.connect(db_url)) as conn:
            return int(conn.execute(sql + "?", (task_id,)).fetchone()[0])
    # libpq decodes the pg_url fixture's ``options=-csearch_path%3D<schema>`` itself.
    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://", 1)) as pg:
        row = pg.execute(sql + "%s", (task_id,)).fetchone()
        assert row is not None
        return int(row[0])


def run_aio(aio: Any, db_url: str, scenario: Callable[[Any, Any], Awaitable[None]],
            rival_offset: float = 0.0) -> None:
    """Run ``scenario(store, rival)`` on two ``AsyncLeaseStore`` objects, closing both."""
    async def main() -> None:
        s = aio.AsyncLeaseStore(db_url, retry_policy=NO_BACKOFF)
        other = aio.AsyncLeaseStore(db_url, retry_policy=NO_BACKOFF, clock_offset=rival_offset)
        try:
            await scenario(s, other)
        finally:
            await other.close()
            await s.close()

    asyncio.run(main())


# --- shared checks -------------------------------------------------------------
def check_took_over(claim: ClaimResult) -> None:
    assert claim.lease is not None and claim.lease.took_over, f"takeover refused: {claim.status}"


def check_still_ours(job: Any, seen: tuple[ClaimResult, int], fence: int) -> None:
    claim, current = seen
    assert claim.busy, f"a rival's claim answered {claim.status}: the lease lapsed inside the block"
    assert current == fence == job.lease.fencing_token, "the fencing token moved"
    assert not job.lost.is_set(), f"lease marked lost: {job.lost_reason}"


def check_lost(job: Any, reason: str) -> None:
    """The handle knows the lease is gone, says why, and refuses to go on."""
    assert job.lost.is_set()
    assert job.lost_reason == reason
    assert not job.held()
    with pytest.raises(LeaseLost) as info:
        job.ensure_held()
    assert info.value.reason == reason


def check_deadline_passed(job: Any) -> None:
    assert not job.held(), "the handle still trusts a lease past its local deadline"
    with pytest.raises(LeaseLost) as info:
        job.ensure_held()
    assert info.value.reason == "deadline"
    assert job.lost.is_set() and job.lost_reason == "deadline"


def until_deadline(job: Any) -> float:
    """Seconds to sleep to land 20 ms before ``job.deadline``: inside any safety margin."""
    return max(0.0, float(job.deadline) - 0.02 - time.monotonic())


def expected_after_loss(how: str) -> str:
    """Status of a task whose holder lost it: the lost holder must not have released it."""
    return "pending" if how == "revoked" else "leased"


# --- 1. the heartbeat keeps a long block's lease ---------------------------------
@pytest.mark.slow
def test_block_outliving_several_ttls_keeps_its_lease(store: LeaseStore, rival: LeaseStore) -> None:
    """A 3.5 s block with ttl=1 that never touches the handle stays the holder:
    every rival claim is busy, the fencing token never moves, exit releases done."""
    task_id = enqueue(store)
    with store.lease(QUEUE, OWNER, ttl=1.0) as job:
        assert job is not None
        fence, start = job.lease.fencing_token, time.monotonic()
        while time.monotonic() - start < 3.5:
            time.sleep(0.25)
            check_still_ours(job, probe(rival, task_id), fence)
        job.ensure_held()
        assert job.deadline > start + 3.5, "heartbeats did not move the local deadline"
    task = store.get_task(task_id)
    assert (task.status, task.fencing_token) == ("done", fence)


@pytest.mark.slow
def test_async_block_outliving_several_ttls_keeps_its_lease(db_url: str) -> None:
    """Test 1 on the asyncio face: the heartbeat task runs while the body awaits."""

    async def scenario(s: Any, other: Any) -> None:
        task_id = await aenqueue(s)
        async with s.lease(QUEUE, OWNER, ttl=1.0) as job:
            assert job is not None
            fence, start = job.lease.fencing_token, time.monotonic()
            while time.monotonic() - start < 3.5:
                await asyncio.sleep(0.25)
                check_still_ours(job, await aprobe(other, task_id), fence)
            job.ensure_held()
        task = await s.get_task(task_id)
        assert (task.status, task.fencing_token) == ("done", fence)

    run_aio(aio, db_url, scenario)


# --- 2. a failing heartbeat marks the lease lost ---------------------------------
@pytest.mark.parametrize("how", END_HOWS)
def test_failed_heartbeat_marks_the_lease_lost(store: LeaseStore, rival: LeaseStore, how: str) -> None:
    """Revoked or taken over behind its back, the holder learns it from its next
    heartbeat (within about ttl/3): ``lost`` set with the reason, ``ensure_held``
    and leaving the block raise LeaseLost, and nothing is released."""
    ttl = 2.0
    rival.clock.offset = TAKEOVER_JUMP if how == "taken_over" else 0.0
    task_id = enqueue(store)
    with pytest.raises(LeaseLost) as on_exit:
        with store.lease(QUEUE, OWNER, ttl=ttl) as job:
            assert job is not None
            end_lease(rival, task_id, how)
            assert job.lost.wait(ttl / 3 + SLACK), "no heartbeat noticed the lost lease in time"
            check_lost(job, how)
    assert on_exit.value.reason == how
    assert store.get_task(task_id).status == expected_after_loss(how)


@pytest.mark.parametrize("how", END_HOWS)
def test_async_failed_heartbeat_marks_the_lease_lost(db_url: str, how: str) -> None:
    """Test 2 on the asyncio face (``job.lost`` is an asyncio.Event)."""
    ttl = 2.0

    async def scenario(s: Any, other: Any) -> None:
        task_id = await aenqueue(s)
        with pytest.raises(LeaseLost) as on_exit:
            async with s.lease(QUEUE, OWNER, ttl=ttl) as job:
                assert job is not None
                await aend_lease(other, task_id, how)
                try:
                    await asyncio.wait_for(job.lost.wait(), ttl / 3 + SLACK)
                except TimeoutError:
                    pytest.fail("no heartbeat noticed the lost lease in time")
                check_lost(job, how)
        assert on_exit.value.reason == how
        assert (await s.get_task(task_id)).status == expected_after_loss(how)

    run_aio(aio, db_url, scenario, rival_offset=TAKEOVER_JUMP if how == "taken_over" else 0.0)


# --- 3. client-side fencing at the local deadline --------------------------------
def test_local_deadline_without_heartbeat_ends_the_lease(store: LeaseStore) -> None:
    """With no heartbeat (interval 60 s, ttl 1 s) the handle gives the lease up by
    itself just before ``job.deadline``: ``ensure_held`` raises LeaseLost("deadline")."""
    enqueue(store)
    with pytest.raises(LeaseLost) as on_exit:
        with store.lease(QUEUE, OWNER, ttl=1.0, heartbeat_interval=60.0) as job:
            assert job is not None
            job.ensure_held()
            assert job.deadline <= time.monotonic() + 1.0
            time.sleep(until_deadline(job))
            check_deadline_passed(job)
    assert on_exit.value.reason == "deadline"


def test_async_local_deadline_without_heartbeat_ends_the_lease(db_url: str) -> None:
    """Test 3 on the asyncio face."""

    async def scenario(s: Any, other: Any) -> None:
        await aenqueue(s)
        with pytest.raises(LeaseLost) as on_exit:
            async with s.lease(QUEUE, OWNER, ttl=1.0, heartbeat_interval=60.0) as job:
                assert job is not None
                job.ensure_held()
                assert job.deadline <= time.monotonic() + 1.0
                await asyncio.sleep(until_deadline(job))
                check_deadline_passed(job)
        assert on_exit.value.reason == "deadline"

    run_aio(aio, db_url, scenario)


# --- 4. heartbeat cadence ------------------------------------------------------
@pytest.mark.slow
def test_heartbeats_every_third_of_the_ttl(store: LeaseStore, db_url: str) -> None:
    """ttl=1.5 without an explicit interval heartbeats every 0.5 s: 4 to 8
    extensions in a 3 s block (an interval of the full TTL would give at most 2)."""
    task_id = enqueue(store)
    with store.lease(QUEUE, OWNER, ttl=1.5) as job:
        assert job is not None
        time.sleep(3.0)
    beats = count_heartbeats(db_url, task_id)
    assert 4 <= beats <= 8, f"{beats} heartbeats in 3 s at ttl=1.5"


# --- 5. an exception releases failed -------------------------------------------
def test_exception_in_block_releases_failed_and_propagates(store: LeaseStore) -> None:
    """An exception leaves the block unchanged after releasing ``failed``: the
    task is pending again (with its checkpoint) and, at the last attempt, dead."""
    task_id = enqueue(store, max_attempts=2)
    for attempt, status in ((1, "pending"), (2, "dead")):
        with pytest.raises(RuntimeError, match=f"boom {attempt}"):
            with store.lease(QUEUE, f"agent-{attempt}", ttl=5.0) as job:
                assert job is not None and job.lease.attempt == attempt
                assert job.lease.checkpoint == (None if attempt == 1 else {"step": 1})
                job.checkpoint({"step": attempt})
                raise RuntimeError(f"boom {attempt}")
        task = store.get_task(task_id)
        assert task.status == status and f"boom {attempt}" in (task.last_error or "")


def test_async_exception_in_block_releases_failed_and_propagates(db_url: str) -> None:
    """Test 5 on the asyncio face."""

    async def scenario(s: Any, other: Any) -> None:
        task_id = await aenqueue(s, max_attempts=2)
        for attempt, status in ((1, "pending"), (2, "dead")):
            with pytest.raises(RuntimeError, match=f"boom {attempt}"):
                async with s.lease(QUEUE, f"agent-{attempt}", ttl=5.0) as job:
                    assert job is not None and job.lease.attempt == attempt
                    assert job.lease.checkpoint == (None if attempt == 1 else {"step": 1})
                    await job.checkpoint({"step": attempt})
                    await asyncio.sleep(0)
                    raise RuntimeError(f"boom {attempt}")
            task = await s.get_task(task_id)
            assert task.status == status and f"boom {attempt}" in (task.last_error or "")

    run_aio(aio, db_url, scenario)
