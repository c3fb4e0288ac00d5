"""Typed errors raised by leasestore.

Every refusal is a subclass of :class:`LeaseStoreError`; the class docstring is
the default message, so callers can print ``str(exc)`` as one clear line::

    LeaseStoreError
    ├── ConfigurationError          bad URL, bad setting
    ├── InvalidArgument (ValueError) bad input, refused before anything is written
    ├── TaskNotFound                no task with that id
    ├── DeadLetterNotFound          no open dead letter with that id
    ├── InvalidTransition           e.g. requeueing a task that is not dead-lettered
    ├── WaitTimeout (TimeoutError)  wait_for: the task did not finish in time
    ├── LeaseLost                   token stale, lease expired, taken over, released, revoked
    │   └── StaleLeaseToken         the token does not match the task's current lease
    ├── DuplicateKey                a concurrent write inserted the same key first
    ├── SchemaNotInitialized        run ``leasestore init-db``
    └── StoreUnavailable            the database could not be reached or written (retryable)
        ├── StoreBusy               SQLite write lock not obtained within busy_timeout
        ├── StoreReadOnly           the database refuses writes
        ├── StoreFull               the disk or the database size limit is full
        └── ClockBehind             (SQLite) this host's clock is behind the store's time

"busy" and "noTask" are claim *results*, not errors.
"""

from __future__ import annotations


class LeaseStoreError(Exception):
    """A lease store operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class ConfigurationError(LeaseStoreError):
    """The store configuration is invalid."""


class InvalidArgument(LeaseStoreError, ValueError):
    """An argument is invalid."""


class TaskNotFound(LeaseStoreError):
    """No task with that id exists."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id!r} not found")


class DeadLetterNotFound(LeaseStoreError):
    """No open dead letter with that id exists."""

    def __init__(self, dead_letter_id: int) -> None:
        self.dead_letter_id = dead_letter_id
        super().__init__(f"no open dead letter with id {dead_letter_id}")


class WaitTimeout(LeaseStoreError, TimeoutError):
    """The task did not finish within the time waited for it."""


class InvalidTransition(LeaseStoreError):
    """The task is not in a state that allows this operation."""


class LeaseLost(LeaseStoreError):
    """The lease is no longer held by this token.

    ``reason`` says why the lease ended: ``expired`` (not yet taken),
    ``taken_over``, ``recovered``, ``released``, ``revoked``, ``reissued`` (the
    same owner claimed again and got a fresh token) or ``invalid_token``.
    """

    def __init__(
        self,
        task_id: str,
        reason: str,
        presented_fencing_token: int | None = None,
        current_fencing_token: int | None = None,
    ) -> None:
        self.task_id = task_id
        self.reason = reason
        self.presented_fencing_token = presented_fencing_token
        self.current_fencing_token = current_fencing_token
        super().__init__(
            f"lease on task {task_id!r} lost ({reason}); fencing token presented "
            f"{presented_fencing_token}, current {current_fencing_token}"
        )


class StaleLeaseToken(LeaseLost):
    """The lease token does not match the task's current lease."""


class SchemaNotInitialized(LeaseStoreError):
    """The database has no leasestore schema: run `leasestore init-db`."""


class StoreUnavailable(LeaseStoreError):
    """The database could not be reached; the operation may be retried."""

    retryable = True


class StoreBusy(StoreUnavailable):
    """The database stayed locked by another writer past the busy timeout; retry."""


class StoreReadOnly(StoreUnavailable):
    """The database refuses writes (read-only file or read-only transaction)."""


class StoreFull(StoreUnavailable):
    """The database or its disk is full."""


class ClockBehind(StoreUnavailable):
    """This process's clock is behind the store's time by more than the tolerance.

    The store refuses its writes (they would judge leases on the wrong time)
    until the clock catches up or an operator resets the store's time."""

    def __init__(self, behind: float, tolerance: float) -> None:
        self.behind = behind
        self.tolerance = tolerance
        super().__init__(f"this host's clock is {behind:.3f} s behind the store's time (tolerance "
                         f"{tolerance:g} s): fix the clock, or run `leasestore clock --reset` once it is right")


class DuplicateKey(LeaseStoreError):
    """A row with that key already exists (e.g. two enqueues raced on one task id)."""
