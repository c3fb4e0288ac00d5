"""The result types that write their own ``__init__`` (for speed) still behave
as the frozen dataclasses they are declared as."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from leasestore import ClaimResult, ClaimStatus, HeartbeatResult, Lease, ReleaseResult
from leasestore.types import ReleaseResultKind

SAMPLES = [
    Lease("t", "q", "o", "secret", 3, 10.0, 30.0, 1, 3, {"p": 1}, None, True),
    ClaimResult(ClaimStatus.BUSY, None, "t", "other", None),
    HeartbeatResult("t", 3, 11.0),
    ReleaseResult("t", ReleaseResultKind.RETRY_SCHEDULED, 1, 12.0, None),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_hand_written_init_takes_the_declared_fields_in_order(value: object) -> None:
    cls = type(value)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields):
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == expected, f.name
    assert [getattr(value, f.name) for f in fields] == list(dataclasses.astuple(value))  # type: ignore[call-overload]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_still_frozen_comparable_and_replaceable(value: object) -> None:
    first = dataclasses.fields(value)[0].name  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, first, "changed")
    copy = dataclasses.replace(value)  # type: ignore[type-var]
    assert copy == value and copy is not value
    keywords = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    assert type(value)(**keywords) == value


def test_a_lease_repr_hides_its_token() -> None:
    assert "secret" not in repr(SAMPLES[0])
