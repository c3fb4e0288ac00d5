"""Waiting claims on PostgreSQL: how soon an idle agent gets a new task, and what
idle agents cost the server.

    .venv/bin/python benchmarks/wait_wakeup.py [--agents 50] [--tasks 200] [--idle 10]

``--agents`` asyncio agents wait in ``claim_task(queue, wait=...)``. First they
idle for ``--idle`` seconds: the server's transaction counter for a database of
this run's own tells how many statements they send. Then tasks are enqueued one
at a time; each agent releases what it gets and waits again. Latency runs from
the enqueue's commit to the claim's return. The baseline, measured in the same
run, is a bare psycopg LISTEN connection receiving the same NOTIFY.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import psycopg

from leasestore import AsyncLeaseStore

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "leasestore_bench_wait"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def transactions(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                       (DB,)).fetchone()
    assert row is not None
    return int(row[0])


async def run(args: argparse.Namespace) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"
    stats = psycopg.connect(ADMIN, autocommit=True)
    claimed: dict[str, float] = {}
    stop = asyncio.Event()

    async def agent(store: AsyncLeaseStore, name: str) -> None:
        while not stop.is_set():
            claim = await store.claim_task("wake", name, wait=args.wait, ttl=60)
            if claim.lease is not None:
                claimed[claim.lease.task_id] = time.monotonic()
                await store.release_task(claim.lease, "done")

    async with AsyncLeaseStore(url, pool_size=20) as store, AsyncLeaseStore(url) as producer:
        agents = [asyncio.create_task(agent(store, f"agent-{i}")) for i in range(args.agents)]
        # Until every agent has made its first looks and is waiting, and the
        # server has counted them: an idle backend reports its statistics up
        # to 10 s late (PostgreSQL's idle stats interval).
        await asyncio.sleep(12.0)
        before = transactions(stats)
        await asyncio.sleep(args.idle)
        idle_rate = (transactions(stats) - before) / args.idle
        enqueued: dict[str, float] = {}
        for i in range(args.tasks):
            tid = (await producer.enqueue("wake", {"n": i})).task_id
            enqueued[tid] = time.monotonic()
            await asyncio.sleep(args.gap)
        await asyncio.sleep(1.0)
        stop.set()
        await producer.enqueue_many("wake", [None] * args.agents)  # wake everyone to stop
        await asyncio.gather(*agents)
    latencies = [(claimed[t] - enqueued[t]) * 1000 for t in enqueued if t in claimed]
    raw = raw_notify_latencies(args.tasks, args.gap)
    stats.close()
    print(f"{args.agents} waiting agents, {len(latencies)}/{args.tasks} tasks claimed")
    print(f"idle: {idle_rate:.2f} statements/s from all agents together (target < 5)")
    for name, values in (("leasestore enqueue->claim", latencies), ("raw NOTIFY->receive", raw)):
        print(f"{name:>26}: p50 {percentile(values, 50):6.2f} ms  p99 {percentile(values, 99):6.2f} ms  "
              f"mean {statistics.fmean(values):6.2f} ms")
    print(f"ratio of p50 (raw / leasestore): {percentile(raw, 50) / percentile(latencies, 50):.2f}; "
          "targets p50 <= 10 ms, p99 <= 50 ms")


def raw_notify_latencies(count: int, gap: float) -> list[float]:
    listener = psycopg.connect(ADMIN.replace("/test", f"/{DB}"), autocommit=True)
    sender = psycopg.connect(ADMIN.replace("/test", f"/{DB}"), autocommit=True)
    listener.execute("LISTEN bench_raw")
    out = []
    for _ in range(count):
        sender.execute("NOTIFY bench_raw, 'x'")
        sent = time.monotonic()
        for _note in listener.notifies(timeout=5, stop_after=1):
            out.append((time.monotonic() - sent) * 1000)
        time.sleep(gap)
    listener.close()
    sender.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between enqueues")
    parser.add_argument("--wait", type=float, default=120.0)
    args = parser.parse_args()
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {DB}")
    try:
        asyncio.run(run(args))
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
