"""What the operation modules share: the store's settings and lease helpers."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from .. import errors, validation
from ..db.driver import Driver
from ..db.rows import LeaseRow
from ..retry import RetryPolicy
from ..types import Lease, LeaseLike

DEFAULT_LEASE_TTL = 30.0
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Context:
    """What every operation needs: the driver and the store's settings."""

    driver: Driver
    default_ttl: float
    retry_policy: RetryPolicy


def new_token() -> str:
    return secrets.token_urlsafe(32)


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
        max_attempts=row.max_attempts, payload=validation.from_json(row.payload),
        checkpoint=validation.from_json(row.checkpoint), took_over=took_over,
    )
