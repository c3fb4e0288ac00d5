"""Many asyncio agents on one event loop, sharing one store.

    python examples/agent_async.py [DATABASE_URL_OR_SQLITE_PATH]

Heartbeats run as asyncio tasks (no threads); on PostgreSQL the store uses a
bounded pool of native async connections, on SQLite worker threads.
"""

import asyncio
import sys

from leasestore import AsyncLeaseStore


async def summarise(payload: dict) -> str:
    await asyncio.sleep(0.05)  # an LLM call, say
    return f"summary of document {payload['doc']}"


async def agent(store: AsyncLeaseStore, name: str) -> int:
    done = 0
    while True:
        async with store.lease("summaries", owner=name, ttl=30) as job:
            if job is None:
                return done                                   # the queue is empty
            text = await summarise(job.lease.payload)
            job.ensure_held()                                 # raises LeaseLost once the lease is gone
            await job.checkpoint({"summary": text})           # the next attempt would see it
            done += 1


async def main(url: str | None) -> None:
    async with AsyncLeaseStore(url) as store:
        await store.enqueue_many("summaries", [{"doc": i} for i in range(20)])
        counts = await asyncio.gather(*(agent(store, f"agent-{i}") for i in range(5)))
        print(f"5 agents finished {sum(counts)} tasks: {counts}")


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
