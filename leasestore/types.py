"""Frozen values returned to callers.

The values every claim and release returns (:class:`Lease`, :class:`ClaimResult`,
:class:`ReleaseResult`, :class:`HeartbeatResult`) get an ``__init__`` from
:func:`_direct_init` that writes their fields straight into the instance's
``__dict__``: a frozen dataclass's generated ``__init__``
makes one ``object.__setattr__`` call per field, which cost more than a
SQLite statement's own Python overhead on the claim path. They stay frozen
dataclasses in every other way (fields, equality, repr, ``replace``).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, Protocol, TypeVar

C = TypeVar("C", bound=type)


def _direct_init(cls: C) -> C:
    """Give a frozen dataclass an ``__init__`` with the generated one's signature
    that writes each field straight into ``__dict__`` (see the module's doc)."""
    params: list[str] = []
    lines: list[str] = []
    namespace: dict[str, Any] = {}
    for f in fields(cls):
        assert f.default_factory is MISSING, f"{cls.__name__}.{f.name}: default factories are not supported"
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        lines.append(f"    d[{f.name!r}] = {f.name}\n")
    exec(f"def __init__(self, {', '.join(params)}):\n    d = self.__dict__\n{''.join(lines)}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)
    return cls


class ClaimStatus(StrEnum):
    ACQUIRED = "acquired"  # a new lease (possibly taking over an expired one)
    RESUMED = "resumed"  # duplicateSuppressed: the owner already held it
    BUSY = "busy"  # someone else holds an unexpired lease
    NO_TASK = "noTask"  # nothing available
    LOCK_DELAYED = "lockDelayed"  # held back: a lease of the task ended unreleased less than lock_delay ago


@_direct_init
@dataclass(frozen=True)
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


@_direct_init
@dataclass(frozen=True)
class ClaimResult:
    status: ClaimStatus
    lease: Lease | None = None
    task_id: str | None = None
    holder: str | None = None  # owner of the lease that made the claim busy
    held_until: float | None = None  # when a lock-delayed task can be leased by anyone

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


@_direct_init
@dataclass(frozen=True)
class HeartbeatResult:
    task_id: str
    fencing_token: int
    expires_at: float


class ReleaseResultKind(StrEnum):
    DONE = "done"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"


@_direct_init
@dataclass(frozen=True)
class ReleaseResult:
    task_id: str
    result: ReleaseResultKind
    attempt: int
    next_attempt_at: float | None = None
    dead_letter_id: int | None = None


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
