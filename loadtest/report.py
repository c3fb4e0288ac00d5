"""Read what a locust run wrote: its JSON stats and the agents' exact latencies.

No locust import here: the runner process stays free of gevent's patching.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import names

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class OperationStats:
    """Latency of one operation (all its outcomes), milliseconds."""

    operation: str
    requests: int
    failures: int
    p50: float
    p95: float
    p99: float
    average: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class LocustStats:
    """Request counts by name (from locust) and latencies by operation."""

    requests: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failures_by_operation: Counter[str] = field(default_factory=Counter)
    duration: float = 0.0  # first request to last, seconds
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
    def throughput(self) -> float:
        """Completed claim → release cycles per second."""
        return self.releases / self.duration if self.duration > 0 else 0.0

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


def read_samples(folder: Path) -> dict[str, list[float]]:
    """Every agent's exact latencies, merged by operation and sorted."""
    merged: dict[str, list[float]] = {op: [] for op in names.OPERATIONS}
    for path in sorted(folder.glob("samples-*.json")):
        for op, values in json.loads(path.read_text()).items():
            merged.setdefault(op, []).extend(float(v) for v in values)
    for values in merged.values():
        values.sort()
    return merged


def read_run(json_path: Path, samples_dir: Path) -> LocustStats:
    stats = read_locust_json(json_path)
    samples = read_samples(samples_dir)
    for op in names.OPERATIONS:
        values = samples.get(op, [])
        requests = sum(n for name, n in stats.requests.items() if name.split(":")[0] == op)
        if not values and not requests:
            continue
        p50, p95, p99 = (percentile(values, p) for p in PERCENTILES)
        stats.operations[op] = OperationStats(
            op, requests + stats.failures_by_operation[op], stats.failures_by_operation[op], p50, p95, p99,
            sum(values) / len(values) if values else 0.0)
    return stats
