"""What the operation modules share: the store's settings and lease helpers."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from .. import errors, validation
from ..db.driver import Driver, Step
from ..db.rows import LeaseRow, QueueSettingsRow
from ..retry import RetryPolicy
from ..types import Lease, LeaseLike

UNSET: Any = object()
"""A keyword left as it is stored (``checkpoint=UNSET``, a queue setting)."""

DEFAULT_LEASE_TTL = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# How stale a queue's settings may be when a claim or a release reads them: a
# change reaches every process within this, without a read per claim.
QUEUE_SETTINGS_MAX_AGE = 1.0


class QueueSettingsCache:
    """Each queue's stored settings as last read, per store (both faces read it
    from one event loop or under the GIL: a dict suffices)."""

    def __init__(self, max_age: float = QUEUE_SETTINGS_MAX_AGE) -> None:
        self.max_age = max_age
        self._entries: dict[str, tuple[float, QueueSettingsRow | None]] = {}

    def get(self, d: Driver, queue: str) -> Step[QueueSettingsRow | None]:
        hit = self._entries.get(queue)
        if hit is not None and time.monotonic() - hit[0] < self.max_age:
            return hit[1]
        row = yield from d.queue_settings(queue)
        self._entries[queue] = (time.monotonic(), row)
        return row

    def put(self, queue: str, row: QueueSettingsRow | None) -> None:
        self._entries[queue] = (time.monotonic(), row)


@dataclass(frozen=True)
class Context:
    """What every operation needs: the driver and the store's settings."""

    driver: Driver
    default_ttl: float
    retry_policy: RetryPolicy
    queues: QueueSettingsCache = field(default_factory=QueueSettingsCache)


def new_token() -> str:
    return secrets.token_urlsafe(32)


# A lease's token is hashed when it is issued and again at each heartbeat and
# its release; the recent ones are kept (the process holds those tokens in
# its Lease objects anyway) so that a holder's write hashes nothing.
TOKEN_HASHES_KEPT = 4096


@functools.lru_cache(maxsize=TOKEN_HASHES_KEPT)
def hash_token(token: str) -> str:
    """Only this hash is stored; the token itself never reaches the database."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def lease_fields(lease: LeaseLike) -> tuple[str, str, int]:
    try:
        task_id, token, fence = lease.task_id, lease.token, lease.fencing_token
    except AttributeError:
        raise errors.InvalidArgument("expected a Lease or LeaseRef") from None
    return validation.name(task_id, "task id"), validation.token(token), validation.fencing_token(fence)


def to_lease(row: LeaseRow, token: str, ttl: float, *, took_over: bool) -> Lease:
    return Lease(
        task_id=row.task_id, queue=row.queue, owner=row.owner, token=token,
        fencing_token=row.fencing_token, expires_at=row.expires_at, ttl=ttl, attempt=row.attempt,
        max_attempts=row.max_attempts,
        payload=None if row.payload is None else validation.from_json(row.payload),
        checkpoint=None if row.checkpoint is None else validation.from_json(row.checkpoint),
        took_over=took_over,
    )
