"""The schema, as SQLModel tables (the enums stored in it are in :mod:`leasestore.states`).

Times are stored as seconds since the epoch (double precision) read from the
database clock through ``leasestore_now()``; see ``leasestore.db``.
Table and column names keep the seed's names.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from .states import (  # noqa: F401 - the schema's enums, also importable from here
    SCHEMA_VERSION,
    DeadLetterStatus,
    EventKind,
    LockOp,
    LockOutcome,
    ReleaseOutcome,
    TaskStatus,
)


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("queue", "dedupe_key", name="uq_tasks_queue_dedupe_key"),
        # Claim-next only ever looks at ready rows: a partial index keeps its cost
        # independent of how many done/dead rows pile up.
        # Higher priority first, then the oldest ready task.
        Index(
            "ix_tasks_ready",
            "queue",
            text("priority DESC"),
            "available_at",
            "created_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_tasks_leased",
            "queue",
            "lease_expires_at",
            sqlite_where=text("status = 'leased'"),
            postgresql_where=text("status = 'leased'"),
        ),
        Index(
            "ix_tasks_owner",
            "owner",
            "queue",
            sqlite_where=text("status = 'leased'"),
            postgresql_where=text("status = 'leased'"),
        ),
        Index("ix_tasks_queue_status", "queue", "status"),
    )

    id: str = Field(primary_key=True, max_length=256)
    queue: str = Field(max_length=256)
    payload: Optional[str] = Field(default=None, sa_column=Column(Text))
    status: str = Field(default=TaskStatus.PENDING, max_length=16)
    attempts: int = 0
    max_attempts: int = 3
    owner: Optional[str] = Field(default=None, max_length=256)
    lease_token_hash: Optional[str] = Field(default=None, max_length=64)
    fencing_token: int = 0
    lease_expires_at: Optional[float] = None
    leased_at: Optional[float] = None
    available_at: float
    checkpoint: Optional[str] = Field(default=None, sa_column=Column(Text))
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text))
    dedupe_key: Optional[str] = Field(default=None, max_length=256)
    created_at: float
    updated_at: float
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    result: Optional[str] = Field(default=None, sa_column=Column(Text))
    # Seconds after an unreleased lease's expiry before another owner may lease
    # the task (fixed at enqueue, from the task or its queue's settings).
    lock_delay: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})
    # The owner of the lease that ended unreleased, while its lock-delay runs:
    # it alone may lease the task again before ``available_at``.
    held_for: Optional[str] = Field(default=None, max_length=256)


class QueueSetting(SQLModel, table=True):
    """A queue's stored settings; NULL means the store's own default."""

    __tablename__ = "queue_settings"

    queue: str = Field(primary_key=True, max_length=256)
    lock_delay: Optional[float] = None
    lease_ttl: Optional[float] = None
    max_attempts: Optional[int] = None
    retry_base: Optional[float] = None
    retry_cap: Optional[float] = None
    updated_at: float


class EventLog(SQLModel, table=True):
    """Append-only audit: the database refuses UPDATE and DELETE (triggers)."""

    __tablename__ = "event_log"
    __table_args__ = (
        Index("ix_event_log_kind_ts", "kind", "ts"),
        Index("ix_event_log_task", "task_id", "id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    ts: float
    task_id: str = Field(max_length=256)
    queue: str = Field(max_length=256)
    kind: str = Field(max_length=32)
    from_status: Optional[str] = Field(default=None, max_length=16)
    to_status: Optional[str] = Field(default=None, max_length=16)
    owner: Optional[str] = Field(default=None, max_length=256)
    fencing_token: Optional[int] = None
    attempt: Optional[int] = None
    reason: Optional[str] = Field(default=None, max_length=64)
    detail: Optional[str] = Field(default=None, sa_column=Column(Text))


class LockEvent(SQLModel, table=True):
    __tablename__ = "lock_events"
    __table_args__ = (Index("ix_lock_events_outcome_ts", "outcome", "ts"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    ts: float
    task_id: Optional[str] = Field(default=None, max_length=256)
    queue: Optional[str] = Field(default=None, max_length=256)
    owner: Optional[str] = Field(default=None, max_length=256)
    op: str = Field(max_length=16)
    outcome: str = Field(max_length=32)
    fencing_token: Optional[int] = None
    detail: Optional[str] = Field(default=None, sa_column=Column(Text))


class DeadLetter(SQLModel, table=True):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status", "created_at"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    task_id: str = Field(max_length=256)
    queue: str = Field(max_length=256)
    reason: str = Field(max_length=64)
    attempts: int
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text))
    status: str = Field(default=DeadLetterStatus.OPEN, max_length=16)
    created_at: float
    closed_at: Optional[float] = None
    note: Optional[str] = Field(default=None, sa_column=Column(Text))


class Alert(SQLModel, table=True):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_ts", "ts"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    ts: float
    metric: str = Field(max_length=64)
    value: float
    threshold: float
    window_minutes: float


class Meta(SQLModel, table=True):
    __tablename__ = "leasestore_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)
