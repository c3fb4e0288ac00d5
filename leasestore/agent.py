"""The agent's context manager, blocking face: claim, heartbeat on a thread, release.

    with store.lease("emails", owner="agent-7", ttl=30) as job:
        if job is None:
            ...  # nothing to do
        for step in steps(job.lease.payload, start=job.lease.checkpoint):
            job.ensure_held()          # raises LeaseLost once the lease is gone
            do(step)
            job.checkpoint({"step": step})

On normal exit the task is released ``done``; on an exception ``failed`` with
the exception's text. If the lease is lost meanwhile, ``job.lost`` is set,
``job.lost_reason`` says why, and leaving the block raises :class:`LeaseLost`
(the work may also have been done by the new holder).

Leaving the block waits for an in-flight heartbeat at most as long as the lease
could still be valid; a heartbeat stuck on a dead network is left behind (its
thread is a daemon, and its socket gives up after the connection's TCP limits).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Protocol

from . import errors
from .heartbeat import HandleState, failure_text, interval_for
from .states import ReleaseOutcome
from .types import ClaimResult, HeartbeatResult, Lease, LeaseLike, ReleaseResult

log = logging.getLogger("leasestore.heartbeat.thread")


class LeaseOps(Protocol):
    """What the context manager needs of a blocking store."""

    def claim_task(self, queue: str | None = ..., owner: str = ..., *, task_id: str | None = ...,
                   ttl: float | None = ..., additional: bool = ...) -> ClaimResult: ...

    def heartbeat(self, lease: LeaseLike, *, ttl: float | None = ..., checkpoint: Any = ...) -> HeartbeatResult: ...

    def release_task(self, lease: LeaseLike, outcome: ReleaseOutcome | str = ..., error: Any = ..., *,
                     retry_in: float | None = ...) -> ReleaseResult: ...


class LeaseHandle(HandleState):
    """A held lease plus what the background heartbeat thread learned about it."""

    def __init__(self, store: LeaseOps, lease: Lease, claim: ClaimResult, sent_at: float) -> None:
        super().__init__(lease, claim, sent_at)
        self._store = store
        self.lost: threading.Event = threading.Event()
        self._lock = threading.Lock()

    def heartbeat(self, checkpoint: Any = None, *, store_checkpoint: bool = False) -> HeartbeatResult:
        sent_at = time.monotonic()
        kwargs: dict[str, Any] = {"checkpoint": checkpoint} if store_checkpoint else {}
        try:
            result = self._store.heartbeat(self.lease, **kwargs)
        except errors.LeaseLost as exc:
            self.mark_lost(exc.reason)
            raise
        with self._lock:
            self.renewed(sent_at)
        return result

    def checkpoint(self, data: Any) -> HeartbeatResult:
        """Store progress now; the next attempt's lease carries it."""
        return self.heartbeat(data, store_checkpoint=True)


def _heartbeat_loop(ref: weakref.ref[LeaseHandle], stop: threading.Event, interval: float) -> None:
    # Only a weak reference: a handle nobody holds any more must not be kept
    # alive (and its lease renewed) by this thread.
    while not stop.wait(interval):
        handle = ref()
        if handle is None:
            return
        try:
            handle.heartbeat()
        except errors.LeaseLost:
            return
        except errors.StoreUnavailable as exc:
            log.warning("heartbeat for %s failed, will retry: %s", handle.lease.task_id, exc)
            if handle.remaining() <= 0:
                handle.mark_lost("unreachable")
                return
        finally:
            del handle


class LeaseContext:
    """Claims on enter, heartbeats in a thread, releases on exit."""

    def __init__(self, store: LeaseOps, queue: str, owner: str, *, ttl: float | None = None,
                 task_id: str | None = None, additional: bool = False,
                 heartbeat_interval: float | None = None) -> None:
        self._store = store
        self._queue = queue
        self._owner = owner
        self._ttl = ttl
        self._task_id = task_id
        self._additional = additional
        self._interval = heartbeat_interval
        self._handle: LeaseHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseHandle | None:
        sent_at = time.monotonic()
        claim = self._store.claim_task(self._queue, self._owner, task_id=self._task_id,
                                       ttl=self._ttl, additional=self._additional)
        if claim.lease is None:
            return None
        handle = LeaseHandle(self._store, claim.lease, claim, sent_at)
        self._handle = handle
        self._thread = threading.Thread(
            target=_heartbeat_loop,
            args=(weakref.ref(handle), self._stop, interval_for(claim.lease.ttl, self._interval)),
            name=f"leasestore-heartbeat-{claim.lease.task_id}", daemon=True)
        self._thread.start()
        return handle

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        handle = self._handle
        if handle is None:
            return
        self._stop.set()
        if self._thread is not None:
            # An in-flight heartbeat is waited for only while the lease could
            # still be valid; after that its answer no longer matters.
            self._thread.join(timeout=handle.remaining())
            if self._thread.is_alive() and handle.remaining() <= 0:
                handle.mark_lost("unreachable")
        if handle.lost.is_set():
            if exc is None:
                raise errors.LeaseLost(handle.lease.task_id, handle.lost_reason or "lost", handle.fencing_token)
            return
        try:
            if exc is None:
                self._store.release_task(handle.lease, ReleaseOutcome.DONE)
            else:
                self._store.release_task(handle.lease, ReleaseOutcome.FAILED, failure_text(exc))
        except errors.LeaseLost as lost:
            handle.mark_lost(lost.reason)
            if exc is None:
                raise
