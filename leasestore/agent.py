"""The agent's context manager: claim, heartbeat in the background, release.

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
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from . import errors
from .models import ReleaseOutcome
from .types import ClaimResult, Lease

if TYPE_CHECKING:
    from .store import LeaseStore

log = logging.getLogger("leasestore.heartbeat.thread")

# Renew at a third of the TTL, as etcd's client does: two renewals can fail
# before the lease runs out.
HEARTBEAT_FRACTION = 1 / 3
# Stop trusting the lease this long before its local deadline.
SAFETY_MARGIN_FRACTION = 0.1


class LeaseHandle:
    """A held lease plus what the background heartbeat learned about it."""

    def __init__(self, store: LeaseStore, lease: Lease, claim: ClaimResult, sent_at: float) -> None:
        self._store = store
        self.lease = lease
        self.claim = claim
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self._lock = threading.Lock()
        # Client-side fencing: the deadline starts when the request was sent,
        # so it can only be earlier than the store's.
        self._deadline = sent_at + lease.ttl

    @property
    def fencing_token(self) -> int:
        return self.lease.fencing_token

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` after which the lease must be presumed gone."""
        return self._deadline

    def held(self) -> bool:
        margin = self.lease.ttl * SAFETY_MARGIN_FRACTION
        return not self.lost.is_set() and time.monotonic() < self._deadline - margin

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` if the lease is gone or about to run out."""
        if self.lost.is_set():
            raise errors.LeaseLost(self.lease.task_id, self.lost_reason or "lost", self.fencing_token)
        if not self.held():
            self._mark_lost("deadline")
            raise errors.LeaseLost(self.lease.task_id, "deadline", self.fencing_token)

    def heartbeat(self, checkpoint: Any = None, *, store_checkpoint: bool = False) -> None:
        sent_at = time.monotonic()
        kwargs: dict[str, Any] = {"checkpoint": checkpoint} if store_checkpoint else {}
        try:
            result = self._store.heartbeat(self.lease, **kwargs)
        except errors.LeaseLost as exc:
            self._mark_lost(exc.reason)
            raise
        with self._lock:
            self._deadline = max(self._deadline, sent_at + self.lease.ttl)
        del result

    def checkpoint(self, data: Any) -> None:
        """Store progress now; the next attempt's lease carries it."""
        self.heartbeat(data, store_checkpoint=True)

    def _mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()


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
            if time.monotonic() >= handle.deadline:
                handle._mark_lost("unreachable")
                return
        finally:
            del handle


class LeaseContext:
    """Claims on enter, heartbeats in a thread, releases on exit."""

    def __init__(
        self,
        store: LeaseStore,
        queue: str,
        owner: str,
        *,
        ttl: float | None = None,
        task_id: str | None = None,
        additional: bool = False,
        heartbeat_interval: float | None = None,
    ) -> None:
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
        interval = self._interval or claim.lease.ttl * HEARTBEAT_FRACTION
        self._thread = threading.Thread(
            target=_heartbeat_loop, args=(weakref.ref(handle), self._stop, interval),
            name=f"leasestore-heartbeat-{claim.lease.task_id}", daemon=True)
        self._thread.start()
        return handle

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        handle = self._handle
        if handle is None:
            return False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if handle.lost.is_set():
            if exc is None:
                raise errors.LeaseLost(handle.lease.task_id, handle.lost_reason or "lost",
                                       handle.fencing_token)
            return False
        try:
            if exc is None:
                self._store.release_task(handle.lease, ReleaseOutcome.DONE)
            else:
                self._store.release_task(handle.lease, ReleaseOutcome.FAILED,
                                         f"{type(exc).__name__}: {exc}")
        except errors.LeaseLost as lost:
            handle._mark_lost(lost.reason)
            if exc is None:
                raise
        return False
