"""Typed rows: the one place that knows each statement's column order.

Each ``from_row`` matches the column list it is named after in
:mod:`leasestore.db.queries`; callers get attributes, never ``row[12]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


# ``tuple.__new__`` itself for the rows of every claim and release: a NamedTuple's
# generated ``__new__`` is a Python function, one frame more per row.
_new = tuple.__new__


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


class LeaseRow(NamedTuple):
    """``LEASE_COLUMNS``: a lease as a claim returns it."""

    task_id: str
    queue: str
    owner: str
    fencing_token: int
    expires_at: float
    attempt: int
    max_attempts: int
    payload: str | None
    checkpoint: str | None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> LeaseRow:
        return _new(cls, (str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4]), int(r[5]), int(r[6]), r[7], r[8]))


class TaskRow(NamedTuple):
    """``TASK_COLUMNS``: a whole task."""

    id: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    owner: str | None
    fencing_token: int
    lease_expires_at: float | None
    available_at: float
    payload: str | None
    checkpoint: str | None
    last_error: str | None
    dedupe_key: str | None
    created_at: float
    updated_at: float
    priority: int
    result: str | None
    lock_delay: float
    held_for: str | None  # the owner a running lock-delay holds the task for

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> TaskRow:
        return cls(str(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]), r[5], int(r[6]), _float(r[7]),
                   float(r[8]), r[9], r[10], r[11], r[12], float(r[13]), float(r[14]), int(r[15]), r[16],
                   float(r[17]), r[18])


class PendingRow(NamedTuple):
    """``SELECT_NEXT_PENDING``."""

    task_id: str
    fencing_token: int

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> PendingRow:
        return _new(cls, (str(r[0]), int(r[1])))


class CandidateRow(NamedTuple):
    """``SELECT_EXPIRED_CANDIDATE``: an expired lease a claimer may take over."""

    task_id: str
    owner: str | None
    fencing_token: int
    expires_at: float
    lock_delay: float = 0.0

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> CandidateRow:
        return cls(str(r[0]), r[1], int(r[2]), float(r[3]), float(r[4]))


class ExpiredRow(NamedTuple):
    """``SELECT_EXPIRED_BATCH``: an expired lease for recovery."""

    task_id: str
    queue: str
    owner: str | None
    fencing_token: int
    attempts: int
    max_attempts: int
    expires_at: float
    lock_delay: float

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> ExpiredRow:
        return cls(str(r[0]), str(r[1]), r[2], int(r[3]), int(r[4]), int(r[5]), float(r[6]), float(r[7]))


class HeldBackRow(NamedTuple):
    """``SELECT_HELD_BACK``: a task a claim would have had but for its lock-delay."""

    task_id: str
    fencing_token: int
    held_until: float

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> HeldBackRow:
        return cls(str(r[0]), int(r[1]), float(r[2]))


class QueueSettingsRow(NamedTuple):
    """``QUEUE_SETTINGS_COLUMNS``: NULL is the store's default."""

    queue: str
    lock_delay: float | None
    lease_ttl: float | None
    max_attempts: int | None
    retry_base: float | None
    retry_cap: float | None
    updated_at: float

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> QueueSettingsRow:
        return cls(str(r[0]), _float(r[1]), _float(r[2]), None if r[3] is None else int(r[3]),
                   _float(r[4]), _float(r[5]), float(r[6]))


class ExtendRow(NamedTuple):
    """What a heartbeat returns."""

    queue: str
    owner: str
    fencing_token: int
    expires_at: float

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> ExtendRow:
        return cls(str(r[0]), str(r[1]), int(r[2]), float(r[3]))


class ReleaseRow(NamedTuple):
    """What a release returns."""

    queue: str
    owner: str
    available_at: float
    dead_letter_id: int | None = None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> ReleaseRow:
        return _new(cls, (str(r[0]), str(r[1]), float(r[2]), None if len(r) < 4 or r[3] is None else int(r[3])))


class LeaseStateRow(NamedTuple):
    """``SELECT_LEASE_STATE``: what a refusal's diagnosis needs."""

    queue: str
    status: str
    fencing_token: int
    token_hash: str | None
    expires_at: float | None
    owner: str | None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> LeaseStateRow:
        return cls(str(r[0]), str(r[1]), int(r[2]), r[3], _float(r[4]), r[5])


class DeadLetterRow(NamedTuple):
    """``DEAD_LETTER_COLUMNS``."""

    id: int
    task_id: str
    queue: str
    reason: str
    attempts: int
    last_error: str | None
    status: str
    created_at: float

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> DeadLetterRow:
        return cls(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), r[5], str(r[6]), float(r[7]))


EVENT_FIELDS = ("id", "ts", "task_id", "queue", "kind", "from_status", "to_status", "owner",
                "fencing_token", "attempt", "reason", "detail")


class EventRow(NamedTuple):
    """``EVENT_COLUMNS``: one audit row."""

    id: int
    ts: float
    task_id: str
    queue: str
    kind: str
    from_status: str | None
    to_status: str | None
    owner: str | None
    fencing_token: int | None
    attempt: int | None
    reason: str | None
    detail: str | None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> EventRow:
        return cls(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], r[6], r[7],
                   None if r[8] is None else int(r[8]), None if r[9] is None else int(r[9]), r[10], r[11])

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVENT_FIELDS}
