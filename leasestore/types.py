"""Frozen values returned to callers.

The values every claim and release returns (:class:`Lease`, :class:`ClaimResult`,
:class:`ReleaseResult`, :class:`HeartbeatResult`) write their fields straight
into the instance's ``__dict__``: a frozen dataclass's generated ``__init__``
makes one ``object.__setattr__`` call per field, which cost more than a
SQLite statement's own Python overhead on the claim path. They stay frozen
dataclasses in every other way (fields, equality, repr, ``replace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class ClaimStatus(StrEnum):
    ACQUIRED = "acquired"  # a new lease (possibly taking over an expired one)
    RESUMED = "resumed"  # duplicateSuppressed: the owner already held it
    BUSY = "busy"  # someone else holds an unexpired lease
    NO_TASK = "noTask"  # nothing available
    LOCK_DELAYED = "lockDelayed"  # held back: a lease of the task ended unreleased less than lock_delay ago


@dataclass(frozen=True, init=False)
class Lease:
    """A held lease. ``token`` is secret: it is needed to heartbeat or release."""

    task_id: str
    queue: str
    owner: str
    token: str = field(repr=False)
    fencing_token: int
    expires_at: float  # database clock, epoch seconds
    ttl: float
    attempt: int
    max_attempts: int
    payload: Any = None
    checkpoint: Any = None
    took_over: bool = False

    def __init__(self, task_id: str, queue: str, owner: str, token: str, fencing_token: int, expires_at: float,
                 ttl: float, attempt: int, max_attempts: int, payload: Any = None, checkpoint: Any = None,
                 took_over: bool = False) -> None:
        d = self.__dict__
        d["task_id"] = task_id
        d["queue"] = queue
        d["owner"] = owner
        d["token"] = token
        d["fencing_token"] = fencing_token
        d["expires_at"] = expires_at
        d["ttl"] = ttl
        d["attempt"] = attempt
        d["max_attempts"] = max_attempts
        d["payload"] = payload
        d["checkpoint"] = checkpoint
        d["took_over"] = took_over


class LeaseLike(Protocol):
    """Anything naming a lease: a :class:`Lease` or a :class:`LeaseRef`."""

    @property
    def task_id(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def fencing_token(self) -> int: ...


@dataclass(frozen=True)
class LeaseRef:
    """A lease known only by id, token and fencing token (e.g. from the CLI)."""

    task_id: str
    token: str = field(repr=False)
    fencing_token: int


@dataclass(frozen=True)
class EnqueueResult:
    task_id: str
    created: bool


@dataclass(frozen=True, init=False)
class ClaimResult:
    status: ClaimStatus
    lease: Lease | None = None
    task_id: str | None = None
    holder: str | None = None  # owner of the lease that made the claim busy
    held_until: float | None = None  # when a lock-delayed task can be leased by anyone

    def __init__(self, status: ClaimStatus, lease: Lease | None = None, task_id: str | None = None,
                 holder: str | None = None, held_until: float | None = None) -> None:
        d = self.__dict__
        d["status"] = status
        d["lease"] = lease
        d["task_id"] = task_id
        d["holder"] = holder
        d["held_until"] = held_until

    @property
    def lock_delayed(self) -> bool:
        return self.status is ClaimStatus.LOCK_DELAYED

    @property
    def acquired(self) -> bool:
        return self.lease is not None

    @property
    def busy(self) -> bool:
        return self.status is ClaimStatus.BUSY

    @property
    def no_task(self) -> bool:
        return self.status is ClaimStatus.NO_TASK


@dataclass(frozen=True, init=False)
class HeartbeatResult:
    task_id: str
    fencing_token: int
    expires_at: float

    def __init__(self, task_id: str, fencing_token: int, expires_at: float) -> None:
        d = self.__dict__
        d["task_id"] = task_id
        d["fencing_token"] = fencing_token
        d["expires_at"] = expires_at


class ReleaseResultKind(StrEnum):
    DONE = "done"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, init=False)
class ReleaseResult:
    task_id: str
    result: ReleaseResultKind
    attempt: int
    next_attempt_at: float | None = None
    dead_letter_id: int | None = None

    def __init__(self, task_id: str, result: ReleaseResultKind, attempt: int, next_attempt_at: float | None = None,
                 dead_letter_id: int | None = None) -> None:
        d = self.__dict__
        d["task_id"] = task_id
        d["result"] = result
        d["attempt"] = attempt
        d["next_attempt_at"] = next_attempt_at
        d["dead_letter_id"] = dead_letter_id


@dataclass(frozen=True)
class RecoveryReport:
    """What one ``recover_stale`` sweep did.

    ``skipped`` leases were expired when scanned but changed before this sweep
    could act (another sweeper or a claimer took them): not failures.
    """

    scanned: int = 0
    recovered: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    failed: int = 0

    def __add__(self, other: RecoveryReport) -> RecoveryReport:
        """Two sweeps' counts together (a sweep runs in batches)."""
        return RecoveryReport(self.scanned + other.scanned, self.recovered + other.recovered,
                              self.dead_lettered + other.dead_lettered, self.skipped + other.skipped,
                              self.failed + other.failed)

    @property
    def attempted(self) -> int:
        return self.recovered + self.dead_lettered + self.failed

    @property
    def failure_ratio(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0


@dataclass(frozen=True)
class ClockStatus:
    """This process's clock and the store's time (SQLite: the latest clock any
    writer used; None on PostgreSQL, whose server clock is the only one)."""

    now: float
    store_time: float | None
    tolerance: float | None

    @property
    def behind(self) -> float:
        """Seconds this process's clock is behind the store's time (0 if not)."""
        return max(0.0, self.store_time - self.now) if self.store_time is not None else 0.0

    @property
    def refused(self) -> bool:
        """Whether this process's writes are refused now."""
        return self.tolerance is not None and self.behind > self.tolerance


@dataclass(frozen=True)
class QueueSettings:
    """A queue's stored settings; None is the store's own default. Enqueue reads
    ``lock_delay`` and ``max_attempts`` in its own transaction; claims and
    releases read ``lease_ttl`` and the retry backoff through a cache at most
    ``QUEUE_SETTINGS_MAX_AGE`` seconds old."""

    queue: str
    lock_delay: float | None = None
    lease_ttl: float | None = None
    max_attempts: int | None = None
    retry_base: float | None = None
    retry_cap: float | None = None
    updated_at: float | None = None


@dataclass(frozen=True)
class TaskInfo:
    id: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    owner: str | None
    fencing_token: int
    lease_expires_at: float | None
    available_at: float
    payload: Any
    checkpoint: Any
    last_error: str | None
    dedupe_key: str | None
    created_at: float
    updated_at: float
    priority: int = 0
    result: Any = None  # what a done release stored
    lock_delay: float = 0.0
    held_for: str | None = None  # while a lock-delay runs (until available_at), the one owner that may lease it


@dataclass(frozen=True)
class DeadLetterInfo:
    id: int
    task_id: str
    queue: str
    reason: str
    attempts: int
    last_error: str | None
    status: str
    created_at: float
