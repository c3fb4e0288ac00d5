"""Retry backoff policy: pure functions, no I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .errors import InvalidArgument

DEFAULT_BACKOFF_BASE = 1.0
DEFAULT_BACKOFF_CAP = 300.0
DEFAULT_JITTER = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The delay after failed attempt ``n`` (1-based) is ``min(cap, base * 2**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]``, so retries of tasks that
    failed together spread out instead of stampeding back at once.
    """

    base: float = DEFAULT_BACKOFF_BASE
    cap: float = DEFAULT_BACKOFF_CAP
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"retry {name} must be a finite number >= 0")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgument("retry jitter must be between 0 and 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        if attempt < 1:
            raise InvalidArgument("attempt must be >= 1")
        raw = min(self.cap, self.base * 2.0 ** min(attempt - 1, 60))
        factor = 1.0 - self.jitter * (rng or random).random()
        return raw * factor


NO_BACKOFF = RetryPolicy(base=0.0, cap=0.0, jitter=0.0)
