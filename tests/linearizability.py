"""Client-observed histories checked against a model of one task's lease.

Each client records every call it makes: when it invoked it, when the answer
came back (``time.monotonic()``, one clock for every process on the host) and
what the answer was. A history is linearizable when some order of its calls,
consistent with real time (a call that returned before another was invoked
comes first), replays on the model with the very answers the clients saw.
The search is Wing & Gong's, with Lowe's memo of visited states.

The model: a task is pending or leased by one holder; a claim of a pending
task acquires it with fence + 1, a claim by the holder resumes, any other claim
is busy and names the holder; a release by the holder with its fence makes the
task pending again, any other release is refused. Nothing else: the histories
come from runs whose leases never expire and whose tasks never finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

State = tuple[str, "str | None", int]  # status, holder, fence
START: State = ("pending", None, 0)


@dataclass(frozen=True)
class Call:
    client: str
    op: str  # "claim" | "release"
    task: str
    invoke: float
    ret: float
    answer: tuple[Any, ...]  # ("acquired", fence) | ("resumed", fence) | ("busy", holder) | ("noTask",)
    #                          | ("ok",) | ("refused",)
    fence: int | None = None  # the fence a release presented

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Call:
        return cls(d["client"], d["op"], d["task"], d["invoke"], d["ret"], tuple(d["answer"]), d.get("fence"))


def step(state: State, call: Call) -> State | None:
    """The state after ``call``, or None if the model could not have answered so."""
    status, holder, fence = state
    if call.op == "claim":
        if status == "pending":
            return ("leased", call.client, fence + 1) if call.answer == ("acquired", fence + 1) else None
        if holder == call.client:
            return state if call.answer == ("resumed", fence) else None
        return state if call.answer == ("busy", holder) else None
    if status == "leased" and holder == call.client and call.fence == fence:
        return ("pending", None, fence) if call.answer == ("ok",) else None
    return state if call.answer == ("refused",) else None


def linearizable(calls: list[Call], start: State = START) -> tuple[bool, str]:
    """Whether one task's history linearizes; if not, where the search got stuck."""
    calls = sorted(calls, key=lambda c: c.invoke)
    n = len(calls)
    seen: set[tuple[State, int, frozenset[int]]] = set()
    stack: list[tuple[State, int, frozenset[int]]] = [(start, 0, frozenset())]
    deepest = 0
    while stack:
        state, lo, done = stack.pop()
        while lo in done:
            done = done - {lo}
            lo += 1
        if lo == n:
            return True, ""
        key = (state, lo, done)
        if key in seen:
            continue
        seen.add(key)
        deepest = max(deepest, lo)
        for j in _candidates(calls, lo, done):
            after = step(state, calls[j])
            if after is not None:
                stack.append((after, lo, done | {j}))
    stuck = calls[deepest]
    return False, f"no order explains the answers around {stuck} (call {deepest} of {n})"


def _candidates(calls: list[Call], lo: int, done: frozenset[int]) -> list[int]:
    """Open calls that may take effect next: invoked before every open call has
    returned. Calls are sorted by invoke, so a call invoked after the earliest
    return seen so far cannot lower it, and the scan stops there."""
    found: list[int] = []
    first_return = float("inf")
    for j in range(lo, len(calls)):
        c = calls[j]
        if c.invoke > first_return:
            break
        if j in done:
            continue
        found.append(j)
        first_return = min(first_return, c.ret)
    return [j for j in found if calls[j].invoke <= first_return]
