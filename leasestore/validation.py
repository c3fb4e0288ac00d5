"""Input checks run before anything is written. Each raises InvalidArgument."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidArgument

MAX_NAME_LENGTH = 256
MAX_JSON_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 8192
MIN_LEASE_TTL = 0.1
MAX_LEASE_TTL = 24 * 3600.0
MAX_ATTEMPTS_LIMIT = 1000
MAX_DELAY = 365 * 24 * 3600.0


def name(value: Any, what: str) -> str:
    # The common case in one test (ASCII needs no UTF-8 check); anything else
    # goes through each rule below for its own message.
    if type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH and value.isascii() and value.strip() \
            and "\x00" not in value:
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8") from None
    return value


def optional_name(value: Any, what: str) -> str | None:
    return None if value is None else name(value, what)


def seconds(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{what} must be a number of seconds")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidArgument(f"{what} must be between {low:g} and {high:g} seconds")
    return number


def ttl(value: Any) -> float:
    return seconds(value, "ttl", MIN_LEASE_TTL, MAX_LEASE_TTL)


def delay(value: Any) -> float:
    return seconds(value, "delay", 0.0, MAX_DELAY)


def max_attempts(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("max_attempts must be an integer")
    if not 1 <= value <= MAX_ATTEMPTS_LIMIT:
        raise InvalidArgument(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
    return value


def positive_int(value: Any, what: str, high: int = 1_000_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidArgument(f"{what} must be an integer between 1 and {high}")
    return value


def non_negative_int(value: Any, what: str, high: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidArgument(f"{what} must be an integer between 0 and {high}")
    return value


PRIORITY_LIMIT = 2**31 - 1


def priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -PRIORITY_LIMIT <= value <= PRIORITY_LIMIT:
        raise InvalidArgument(f"priority must be an integer between {-PRIORITY_LIMIT} and {PRIORITY_LIMIT}")
    return value


def to_json(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply") from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} contains invalid UTF-8") from None
    if size > MAX_JSON_BYTES:
        raise InvalidArgument(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    return text


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def error_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\x00", "\\0")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    # A failing task must always be releasable: long errors are cut, not refused.
    return text[:MAX_ERROR_CHARS]


def token(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 512 or "\x00" in value:
        raise InvalidArgument("lease token must be a non-empty string")
    return value


# The column is a 32-bit integer on PostgreSQL: no fence the store issued is larger.
MAX_FENCING_TOKEN = 2**31 - 1


def fencing_token(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FENCING_TOKEN:
        raise InvalidArgument(f"fencing token must be an integer between 1 and {MAX_FENCING_TOKEN}")
    return value


MAX_LOCK_DELAY = 24 * 3600.0


def lock_delay(value: Any) -> float:
    return seconds(value, "lock_delay", 0.0, MAX_LOCK_DELAY)
