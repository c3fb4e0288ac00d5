"""The states, kinds and outcomes stored in the schema, and its version.

Apart from :mod:`leasestore.models` (the tables, for creating the schema) so
that using a store never imports SQLModel: a process that opens an existing
store, the CLI and the exporter start without it.

On Python 3.11 reading a member through its class (``TaskStatus.PENDING``)
goes through ``EnumType.__getattr__``, several times the cost of a plain
attribute; a SQLite claim and release read some thirty members, which was the
largest single cost of the cycle (about 36k instructions in 790k). The modules
on that path read the members they need once, into module constants.
"""

from __future__ import annotations

from enum import StrEnum

SCHEMA_VERSION = 3


class TaskStatus(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    DEAD = "dead"


class ReleaseOutcome(StrEnum):
    DONE = "done"
    FAILED = "failed"


class EventKind(StrEnum):
    """Kinds of ``event_log`` rows: one per change of a task's state or lease."""

    ENQUEUED = "enqueued"
    CLAIMED = "claimed"
    TAKEN_OVER = "taken_over"  # an expired lease handed to a new claim
    RELEASED = "released"  # done
    RETRY_SCHEDULED = "retry_scheduled"  # failed below the retry limit
    DEAD_LETTERED = "dead_lettered"
    RECOVERED = "recovered"  # expired lease returned to pending by recover_stale
    REVOKED = "revoked"  # operator ended a lease
    REQUEUED = "requeued"  # dead letter put back to pending
    RESOLVED = "resolved"  # dead letter closed without requeue
    CHECKPOINTED = "checkpointed"  # heartbeat stored a checkpoint


class LockOutcome(StrEnum):
    """Outcomes recorded in ``lock_events``; values are unique across operations."""

    ACQUIRED = "acquired"
    TAKEN_OVER = "taken_over"
    DUPLICATE = "duplicate"  # duplicateSuppressed
    BUSY = "busy"  # a conflict: someone else holds the lease
    EXTENDED = "extended"
    CONFLICT = "conflict"  # stale token on heartbeat or release
    RELEASED = "released"
    RECOVERED = "recovered"
    RECOVER_DEAD_LETTERED = "recover_dead_lettered"
    RECOVER_FAILED = "recover_failed"
    REVOKED = "revoked"
    CLOCK_BEHIND = "clock_behind"  # a write refused: the writer's clock is behind the store's time
    LOCK_DELAYED = "lock_delayed"  # a claim held back: the task's last lease ended unreleased too recently
    SETTINGS_CHANGED = "settings_changed"  # an operator changed a queue's settings


class LockOp(StrEnum):
    CLAIM = "claim"
    HEARTBEAT = "heartbeat"
    RELEASE = "release"
    RECOVER = "recover"
    REVOKE = "revoke"
    WRITE = "write"  # any write, refused before it started (clock_behind)
    CONFIGURE = "configure"  # queue settings


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REQUEUED = "requeued"
    RESOLVED = "resolved"
