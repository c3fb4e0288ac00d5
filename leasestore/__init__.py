"""leasestore: a lease store for AI agents that never loses a task.

Agents claim tasks with a TTL, heartbeat while they work and release them as
done or failed; expired leases are taken over or recovered, failures retry
with backoff up to a limit and then become dead letters, and every change is
written to an append-only audit log. SQLite by default, PostgreSQL for agents
on several hosts.
"""

from .agent import LeaseContext, LeaseHandle
from .errors import (
    ClockBehind,
    ConfigurationError,
    DeadLetterNotFound,
    DuplicateKey,
    InvalidArgument,
    InvalidTransition,
    LeaseLost,
    LeaseStoreError,
    SchemaNotInitialized,
    StaleLeaseToken,
    StoreBusy,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TaskNotFound,
    WaitTimeout,
)
from .states import EventKind, LockOutcome, ReleaseOutcome, TaskStatus
from .retry import NO_BACKOFF, RetryPolicy
from .store import DEFAULT_LEASE_TTL, LeaseStore
from .aio import AsyncLeaseContext, AsyncLeaseHandle, AsyncLeaseStore
from .types import (
    ClaimResult,
    ClaimStatus,
    QueueSettings,
    ClockStatus,
    DeadLetterInfo,
    EnqueueResult,
    HeartbeatResult,
    Lease,
    LeaseRef,
    RecoveryReport,
    ReleaseResult,
    ReleaseResultKind,
    TaskInfo,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LEASE_TTL", "NO_BACKOFF", "QueueSettings", "AsyncLeaseContext", "AsyncLeaseHandle", "AsyncLeaseStore", "ClaimResult", "ClaimStatus", "ClockBehind", "ClockStatus", "ConfigurationError",
    "DeadLetterInfo", "DeadLetterNotFound", "DuplicateKey", "EnqueueResult", "EventKind", "HeartbeatResult",
    "InvalidArgument", "InvalidTransition", "Lease", "LeaseContext", "LeaseHandle", "LeaseLost",
    "LeaseRef", "LeaseStore", "LeaseStoreError", "LockOutcome", "RecoveryReport", "ReleaseOutcome",
    "ReleaseResult", "ReleaseResultKind", "RetryPolicy", "SchemaNotInitialized", "StaleLeaseToken",
    "StoreBusy", "StoreFull", "StoreReadOnly", "StoreUnavailable", "TaskInfo", "TaskNotFound",
    "TaskStatus", "WaitTimeout", "__version__",
]
