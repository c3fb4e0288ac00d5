"""What only the asyncio face has: cancellation, a loop that is never blocked,
many agents on one loop, and an agent whose own loop stalls past its TTL.

Real event loops, real SQLite files and the real PostgreSQL; no mocks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

from leasestore import NO_BACKOFF, AsyncLeaseStore, LeaseLost, LeaseStore
from leasestore.history import check_history

QUEUE = "q"


def test_a_cancelled_block_hands_its_task_back_at_once(db_url: str) -> None:
    """Cancelling ``async with store.lease(...)`` releases the task for another attempt
    (no wait for the TTL), counts the attempt, and the cancellation propagates."""
    async def main() -> None:
        async with AsyncLeaseStore(db_url, retry_policy=NO_BACKOFF) as store:
            tid = (await store.enqueue(QUEUE)).task_id
            entered = asyncio.Event()

            async def agent() -> None:
                async with store.lease(QUEUE, "a", ttl=60) as job:
                    assert job is not None
                    entered.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(agent())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            info = await store.get_task(tid)
            assert info.status == "pending" and info.attempts == 1 and info.last_error == "cancelled"
            again = await store.claim_task(QUEUE, "b", ttl=60)
            assert again.lease is not None and again.lease.task_id == tid and again.lease.fencing_token == 2
            kinds = [e["kind"] for e in await store.events(task_id=tid)]
            assert kinds == ["enqueued", "claimed", "retry_scheduled", "claimed"]

    asyncio.run(main())


def test_a_claim_cancelled_in_flight_leaves_no_lease_behind(db_url: str) -> None:
    """Cancelling while the claim itself is running: whatever it committed is handed back."""
    async def main() -> None:
        async with AsyncLeaseStore(db_url, retry_policy=NO_BACKOFF) as store:
            await store.enqueue_many(QUEUE, list(range(20)))
            for _ in range(20):
                task = asyncio.create_task(_enter_and_hold(store))
                await asyncio.sleep(0)  # the claim is under way, not finished
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            leased = await store.list_tasks(queue=QUEUE, status="leased")
            assert leased == []
            report = await asyncio.to_thread(_history_ok, db_url)
            assert report

    asyncio.run(main())


async def _enter_and_hold(store: AsyncLeaseStore) -> None:
    async with store.lease(QUEUE, "a", ttl=60, additional=True):
        await asyncio.sleep(3600)


def _history_ok(url: str) -> bool:
    with LeaseStore(url, init=False) as s:
        report = check_history(s, require_drained=False)
        assert report.ok, report.summary()
        return True


def test_sqlite_waits_for_the_write_lock_off_the_loop(sqlite_url: str) -> None:
    """While another connection holds SQLite's write lock, an async claim waits
    for it without stalling the event loop: a ticker keeps ticking."""
    LeaseStore(sqlite_url).close()  # schema

    async def main() -> None:
        async with AsyncLeaseStore(sqlite_url, fair_writes=False, busy_timeout=5) as store:
            await store.enqueue(QUEUE)
            blocker = sqlite3.connect(sqlite_url, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticking = asyncio.create_task(ticker())
            claiming = asyncio.create_task(store.claim_task(QUEUE, "a"))
            await asyncio.sleep(0.5)
            assert not claiming.done()
            assert ticks >= 20, f"the loop stalled: {ticks} ticks in 0.5 s"
            blocker.execute("ROLLBACK")
            blocker.close()
            claim = await claiming
            assert claim.lease is not None
            ticking.cancel()

    asyncio.run(main())


def test_a_stalled_loop_loses_its_lease_and_its_late_writes_are_refused(db_url: str) -> None:
    """An agent that blocks its own loop (a synchronous sleep) past its TTL: the
    task is taken over meanwhile, the agent learns it (LeaseLost) and every late
    write is refused."""
    async def main() -> None:
        async with AsyncLeaseStore(db_url, retry_policy=NO_BACKOFF) as store:
            tid = (await store.enqueue(QUEUE)).task_id
            rival = threading.Thread(target=_take_over_after, args=(db_url, tid, 1.5))
            with pytest.raises(LeaseLost):
                async with store.lease(QUEUE, "stalled", ttl=1.0) as job:
                    assert job is not None
                    rival.start()
                    time.sleep(3.0)  # blocks the loop: no heartbeat can run
                    with pytest.raises(LeaseLost):
                        job.ensure_held()
                    with pytest.raises(LeaseLost):
                        await store.heartbeat(job.lease)
                    with pytest.raises(LeaseLost):
                        await store.release_task(job.lease, "done")
            rival.join()
            info = await store.get_task(tid)
            assert info.owner == "rival" and info.status == "leased" and info.fencing_token == 2

    asyncio.run(main())


def _take_over_after(url: str, task_id: str, delay: float) -> None:
    time.sleep(delay)
    with LeaseStore(url, init=False) as s:
        claim = s.claim_task(task_id=task_id, owner="rival", ttl=60)
        assert claim.lease is not None and claim.lease.took_over


@pytest.mark.slow
def test_a_thousand_agents_on_one_loop_drain_five_thousand_tasks(pg_url: str) -> None:
    """One asyncio process, 1,000 concurrent agents, a pool of at most 20 PostgreSQL
    connections, 5,000 tasks with heartbeats: no lease lost, every task done once,
    the history check clean."""
    agents, tasks, pool = 1000, 5000, 20
    stats = {"done": 0, "lost": 0, "heartbeats": 0}
    reasons: list[str] = []

    async def agent(store: AsyncLeaseStore, name: str) -> None:
        while True:
            try:
                # A beat 1.5 s in, half the block ahead of it: on a loaded machine a beat
                # may wait a second for one of the 20 connections and must still land
                # before the block ends. The TTL leaves room for a claim that waited
                # seconds for a connection.
                async with store.lease(QUEUE, name, ttl=8.0, heartbeat_interval=1.5) as job:
                    if job is None:
                        return
                    await asyncio.sleep(3.0)
                    job.ensure_held()
            except LeaseLost as exc:
                stats["lost"] += 1
                reasons.append(exc.reason)
                continue
            stats["done"] += 1

    async def main() -> float:
        async with AsyncLeaseStore(pg_url, retry_policy=NO_BACKOFF, pool_size=pool) as store:
            await store.enqueue_many(QUEUE, list(range(tasks)))
            started = time.monotonic()
            await asyncio.gather(*(agent(store, f"agent-{i}") for i in range(agents)))
            return time.monotonic() - started

    elapsed = asyncio.run(main())
    with LeaseStore(pg_url, init=False) as s:
        report = check_history(s)
        beats = int(s.database.query("SELECT COUNT(*) FROM lock_events WHERE op = 'heartbeat' "
                                     "AND outcome = 'extended'")[0][0])
        conflict_rows = s.database.query("SELECT op, owner, fencing_token, detail FROM lock_events "
                                         "WHERE outcome = 'conflict'")
        conflicts = len(conflict_rows)
    print(f"\n{agents} agents, pool {pool}: {tasks} tasks in {elapsed:.1f} s, {beats} heartbeats, "
          f"{stats['lost']} lost, {conflicts} conflicts")
    assert report.ok, report.summary()
    assert stats == {**stats, "done": tasks, "lost": 0} and conflicts == 0, (reasons, conflict_rows[:5])
    assert report.terminal["done"] == tasks
    assert beats >= tasks * 3 // 4  # most blocks heartbeat at least once
