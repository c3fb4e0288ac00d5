"""When to renew a lease and when to stop trusting it: one policy for both faces.

The blocking face runs it on a daemon thread, the asyncio face on a task; the
numbers and the rules are the same.
"""

from __future__ import annotations

import time
from typing import Protocol

from . import errors
from .types import ClaimResult, Lease

# Renew at a third of the TTL, as etcd's client does: two renewals can fail
# before the lease runs out.
HEARTBEAT_FRACTION = 1 / 3
# Stop trusting the lease this long before its local deadline.
SAFETY_MARGIN_FRACTION = 0.1


def interval_for(ttl: float, requested: float | None) -> float:
    return requested if requested is not None else ttl * HEARTBEAT_FRACTION


class LeaseDeadline:
    """The holder's own view of its lease: a local deadline that only moves on a
    successful heartbeat, counted from when that request was *sent*, so it can
    only be earlier than the store's."""

    def __init__(self, lease: Lease, sent_at: float) -> None:
        self.lease = lease
        self.deadline = sent_at + lease.ttl
        self.lost_reason: str | None = None

    def renewed(self, sent_at: float) -> None:
        self.deadline = max(self.deadline, sent_at + self.lease.ttl)

    def remaining(self) -> float:
        """Seconds the lease may still be valid (a holder call waits no longer)."""
        return max(0.0, self.deadline - time.monotonic())

    def trusted(self) -> bool:
        return time.monotonic() < self.deadline - self.lease.ttl * SAFETY_MARGIN_FRACTION

    def error(self, reason: str | None = None) -> errors.LeaseLost:
        return errors.LeaseLost(self.lease.task_id, reason or self.lost_reason or "lost",
                                self.lease.fencing_token)


class LostFlag(Protocol):
    """``threading.Event`` for the blocking face, ``asyncio.Event`` for asyncio."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


class HandleState:
    """What both faces' handles know about their lease, and the same answers to
    "is it still mine?"."""

    lost: LostFlag

    def __init__(self, lease: Lease, claim: ClaimResult, sent_at: float) -> None:
        self.lease = lease
        self.claim = claim
        self._view = LeaseDeadline(lease, sent_at)

    @property
    def fencing_token(self) -> int:
        return self.lease.fencing_token

    @property
    def lost_reason(self) -> str | None:
        return self._view.lost_reason

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` after which the lease must be presumed gone."""
        return self._view.deadline

    def held(self) -> bool:
        return not self.lost.is_set() and self._view.trusted()

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` if the lease is gone or about to run out."""
        if self.lost.is_set():
            raise self._view.error()
        if not self._view.trusted():
            self.mark_lost("deadline")
            raise self._view.error("deadline")

    def mark_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self._view.lost_reason = reason
            self.lost.set()

    def remaining(self) -> float:
        """Seconds the lease may still be valid (a holder call waits no longer)."""
        return self._view.remaining()

    def renewed(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` succeeded."""
        self._view.renewed(sent_at)

    def lost_error(self, reason: str | None = None) -> errors.LeaseLost:
        return self._view.error(reason)


def failure_text(exc: BaseException) -> str:
    """What a failed release records as the task's error."""
    return f"{type(exc).__name__}: {exc}"
