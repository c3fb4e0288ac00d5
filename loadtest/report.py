"""Read what a locust run wrote: its JSON stats and every agent's timed calls.

Counts (requests and failures by name) are the whole run's, from locust's
``--json-file``: they are what the audit log is cross-checked against.

Rates and latencies come from the *measured window* only: the time during
which every agent was running and there was work, from the moment the last
agent made its first call to the moment the first agent made its last call
(or the last release of the run, if the work ran out earlier). Ramp-up, the
tail where some agents had stopped, and the runner's final drain are outside
it. A window shorter than :data:`MIN_WINDOW_SECONDS` or holding fewer than
:data:`MIN_WINDOW_CYCLES` releases is too short to measure: no rate and no
percentiles are given for it, and the summary says so.

No locust import here: the runner process stays free of gevent's patching.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import names

PERCENTILES = (50, 95, 99)
# Below either, a rate or a percentile says more about process start-up and
# scheduling noise than about the store.
MIN_WINDOW_SECONDS = 1.0
MIN_WINDOW_CYCLES = 100
RELEASE_NAMES = frozenset({names.RELEASE_DONE, names.RELEASE_FAILED})


@dataclass(frozen=True)
class Call:
    """One store call an agent made: its request name (operation:outcome, or the
    operation alone when it failed), when it started (epoch seconds) and how long it took."""

    operation: str
    name: str
    start: float
    ms: float
    ok: bool = True

    @property
    def end(self) -> float:
        return self.start + self.ms / 1000

    @property
    def cycle(self) -> bool:
        """A completed claim → release cycle."""
        return self.ok and self.name in RELEASE_NAMES


@dataclass(frozen=True)
class Window:
    """The measured window (see the module's docstring)."""

    start: float = 0.0
    end: float = 0.0
    agents: int = 0
    cycles: int = 0  # successful releases that started and ended inside it
    calls: int = 0  # calls that started and ended inside it

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def measurable(self) -> bool:
        return self.seconds >= MIN_WINDOW_SECONDS and self.cycles >= MIN_WINDOW_CYCLES

    @property
    def too_short(self) -> str | None:
        """Why the window is too short to measure, or None when it is not."""
        if self.measurable:
            return None
        if not self.agents:
            return "no agent made a call"
        return (f"{self.cycles} cycles in {self.seconds:.2f} s with all {self.agents} agents running; a rate needs "
                f"at least {MIN_WINDOW_SECONDS:g} s and {MIN_WINDOW_CYCLES} cycles")

    def holds(self, call: Call) -> bool:
        return self.start <= call.start and call.end <= self.end

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "seconds": self.seconds, "agents": self.agents,
                "cycles": self.cycles, "calls": self.calls, "measurable": self.measurable,
                "too_short": self.too_short, "min_seconds": MIN_WINDOW_SECONDS, "min_cycles": MIN_WINDOW_CYCLES}


@dataclass(frozen=True)
class OperationStats:
    """One operation (all its outcomes): the run's counts, and latency in the
    measured window, milliseconds (None when the window is too short)."""

    operation: str
    requests: int
    failures: int
    in_window: int
    p50: float | None
    p95: float | None
    p99: float | None
    average: float | None

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class LocustStats:
    """Request counts by name (the whole run, from locust) and the measured window."""

    requests: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failures_by_operation: Counter[str] = field(default_factory=Counter)
    duration: float = 0.0  # the whole load run, first request to last, seconds
    window: Window = field(default_factory=Window)
    operations: dict[str, OperationStats] = field(default_factory=dict)

    def count(self, *request_names: str) -> int:
        return sum(self.requests[n] for n in request_names)

    @property
    def claims(self) -> int:
        return sum(n for name, n in self.requests.items() if name.split(":")[0] == "claim")

    @property
    def releases(self) -> int:
        return self.count(names.RELEASE_DONE, names.RELEASE_FAILED)

    @property
    def throughput(self) -> float | None:
        """Completed claim → release cycles per second in the measured window;
        None when it is too short to measure."""
        return self.window.cycles / self.window.seconds if self.window.measurable else None

    def ratio(self, name: str) -> float:
        return self.requests[name] / self.claims if self.claims else 0.0


def percentile(sorted_samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted samples (0 when empty)."""
    if not sorted_samples:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_samples)))
    return sorted_samples[rank - 1]


def read_locust_json(path: Path) -> LocustStats:
    """Counts per request name and the run's duration from ``--json-file``."""
    stats = LocustStats()
    if not path.exists():
        return stats
    entries = json.loads(path.read_text())
    starts, ends = [], []
    for entry in entries:
        successes = int(entry["num_requests"]) - int(entry["num_failures"])
        if successes:
            stats.requests[entry["name"]] += successes
        if entry["num_failures"]:
            stats.failures[entry["name"]] += int(entry["num_failures"])
            stats.failures_by_operation[entry["method"]] += int(entry["num_failures"])
        if entry["num_requests"]:
            starts.append(float(entry["start_time"]))
            ends.append(float(entry["last_request_timestamp"]))
    if starts:
        stats.duration = max(ends) - min(starts)
    return stats


def read_calls(folder: Path) -> list[list[Call]]:
    """Every agent's calls (one list per agent, as it wrote them)."""
    agents = []
    for path in sorted(folder.glob("samples-*.json")):
        data = json.loads(path.read_text())
        agents.append([Call(str(op), str(name), float(start), float(ms), bool(ok))
                       for op, name, start, ms, ok in data["calls"]])
    return agents


def measure_window(agents: Iterable[Sequence[Call]]) -> Window:
    """The window in which every agent that made calls was running, cut at the
    run's last release (agents spinning on an empty queue are not load)."""
    active = [sorted(calls, key=lambda c: c.start) for calls in agents if calls]
    if not active:
        return Window()
    start = max(calls[0].start for calls in active)
    end = min(max(c.end for c in calls) for calls in active)
    releases = [c.end for calls in active for c in calls if c.cycle]
    if releases:
        end = min(end, max(releases))
    window = Window(start, max(start, end), len(active))
    inside = [c for calls in active for c in calls if window.holds(c)]
    return Window(window.start, window.end, window.agents, sum(1 for c in inside if c.cycle), len(inside))


def read_run(json_path: Path, samples_dir: Path) -> LocustStats:
    stats = read_locust_json(json_path)
    agents = read_calls(samples_dir)
    calls = [c for agent in agents for c in agent]
    if calls:  # exact, where locust's own timestamps are per stats entry
        stats.duration = max(c.end for c in calls) - min(c.start for c in calls)
    stats.window = window = measure_window(agents)
    inside: dict[str, list[float]] = {op: [] for op in names.OPERATIONS}
    for calls in agents:
        for call in calls:
            if window.holds(call):
                inside.setdefault(call.operation, []).append(call.ms)
    for op in names.OPERATIONS:
        values = sorted(inside.get(op, []))
        requests = sum(n for name, n in stats.requests.items() if name.split(":")[0] == op)
        failures = stats.failures_by_operation[op]
        if not values and not requests and not failures:
            continue
        if window.measurable and values:
            p50, p95, p99 = (percentile(values, p) for p in PERCENTILES)
            figures: tuple[float | None, ...] = (p50, p95, p99, sum(values) / len(values))
        else:
            figures = (None, None, None, None)
        stats.operations[op] = OperationStats(op, requests + failures, failures, len(values), *figures)
    return stats
