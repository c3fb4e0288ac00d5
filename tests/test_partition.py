"""A holder cut off from PostgreSQL mid-lease (a partition that neither refuses
nor answers): leaving ``with``/``async with`` waits no longer than the lease
could still be valid, and the holder learns its lease is gone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from leasestore import NO_BACKOFF, AsyncLeaseStore, LeaseLost, LeaseStore
from tests.netproxy import FreezableProxy

TTL = 2.0
# Scheduling slack on a loaded 2-core machine.
SLACK = 1.0


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[str, FreezableProxy]]:
    """``pg_url`` through a proxy the test can freeze."""
    LeaseStore(pg_url).close()  # the schema, made directly
    proxy = FreezableProxy(("127.0.0.1", 5432))
    yield pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"), proxy
    proxy.close()


def test_sync_block_exits_within_the_lease_after_a_partition(proxied: tuple[str, FreezableProxy]) -> None:
    url, proxy = proxied
    store = LeaseStore(url, init=False, retry_policy=NO_BACKOFF)
    # The partition heals on its own later, so a block that waits for the stuck
    # heartbeat fails the timing check instead of hanging the suite.
    healer = threading.Timer(4 * TTL, proxy.close)
    healer.start()
    try:
        store.enqueue("q", task_id="t")
        with pytest.raises(LeaseLost) as lost:
            with store.lease("q", "a", ttl=TTL) as job:
                assert job is not None
                time.sleep(TTL / 2)  # a heartbeat or two go through
                proxy.freeze()
                frozen_at = time.monotonic()
                deadline = job.deadline
                while job.held():
                    time.sleep(0.05)
        exited = time.monotonic()
        assert lost.value.reason in ("unreachable", "deadline")
        assert exited <= deadline + SLACK, f"left {exited - deadline:.2f} s after the local deadline"
        assert exited - frozen_at <= TTL + SLACK
    finally:
        healer.cancel()
        proxy.close()  # the stuck heartbeat's socket ends, so the pool can close
        store.close()


def test_async_block_exits_within_the_lease_after_a_partition(proxied: tuple[str, FreezableProxy]) -> None:
    url, proxy = proxied

    async def main() -> tuple[float, float, float, str]:
        async with AsyncLeaseStore(url, init=False, retry_policy=NO_BACKOFF) as store:
            await store.enqueue("q", task_id="t")
            try:
                async with store.lease("q", "a", ttl=TTL) as job:
                    assert job is not None
                    await asyncio.sleep(TTL / 2)
                    proxy.freeze()
                    frozen_at = time.monotonic()
                    while not job.lost.is_set() and job.held():
                        await asyncio.sleep(0.05)
                    deadline = job.deadline
            except LeaseLost as exc:
                exited = time.monotonic()
                proxy.close()
                return frozen_at, deadline, exited, exc.reason
            raise AssertionError("the block ended without LeaseLost")

    frozen_at, deadline, exited, reason = asyncio.run(main())
    assert reason in ("unreachable", "deadline")
    assert exited <= deadline + SLACK and exited - frozen_at <= TTL + SLACK
