"""The phase-3 runs: locust in real processes against a real store, then a verdict.

:func:`run_scenario` enqueues a run's tasks in a queue of its own, runs
``locust --headless --processes N`` (one agent per process, locust's
master/worker mode over loopback), shows progress from the database while it
runs, drains what the agents left, and checks the result:

* the invariants of DESIGN.md on the run's own tasks (``leasestore.history``),
  and the seven metrics over the run's window against a recount of the log;
* the load's own counts against the audit log: every successful claim,
  heartbeat and release locust recorded must have its ``lock_events`` row, and
  no row may be missing a request;
* on a store the run has to itself, ``lockConflictEvents`` and
  ``duplicateSuppressed`` from :func:`compute_metrics` against locust's counts.

:func:`run_concurrency` is one run; :func:`run_regression` repeats it and fails
when throughput or p95 latency worsens beyond a tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from leasestore import LeaseStore, errors
from leasestore.history import HistoryReport, check_history, check_metrics
from leasestore.metrics import MetricsReport, compute_metrics

from . import names
from .report import LocustStats, read_run

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_MAX_SECONDS = 300.0
# Regression: a later round fails when it is worse than the first by more than
# a factor of (1 + tolerance): throughput below first / (1 + tolerance), or a
# claim or release p95 above first * (1 + tolerance). 1.0 allows 2x, generous
# because a 2-core machine shared with other work is noisy.
DEFAULT_TOLERANCE = 1.0
# p95 growth smaller than this is scheduler noise at millisecond latencies.
P95_NOISE_FLOOR_MS = 5.0
# After the agents stop: how long the drain may take beyond the lease TTL.
DRAIN_SECONDS = 60.0
DRAIN_OWNER = "phase3-drain"
DRAIN_TTL = 30.0
POLL_SECONDS = 0.2
MAX_WORKERS = 64
# Simulated work (ms) before each heartbeat and the release. Hot-id agents
# must hold their leases a while, or no claim ever meets a held task.
SCENARIO_WORK_MS = {"drain": 0.0, "hot": 5.0, "stall": 0.0}

BeforeVerdict = Callable[[LeaseStore, str], None]


@dataclass(frozen=True)
class RunConfig:
    """One phase-3 run. ``db_url=None`` means a fresh SQLite file in ``report_dir``."""

    report_dir: Path
    scenario: str = "drain"
    workers: int = 4
    tasks: int = 200
    iterations: int = 25
    fail_rate: float = 0.1
    ttl: float = 5.0
    db_url: str | None = None
    heartbeats: int = 1
    work_ms: float | None = None  # None: the scenario's default (SCENARIO_WORK_MS)
    hot_tasks: int = 4
    stall_rate: float = 0.2
    max_seconds: float = DEFAULT_MAX_SECONDS
    seed: int = 0

    @property
    def work(self) -> float:
        return SCENARIO_WORK_MS.get(self.scenario, 0.0) if self.work_ms is None else self.work_ms

    def validate(self) -> RunConfig:
        if self.scenario not in names.SCENARIOS:
            raise errors.InvalidArgument(f"scenario must be one of {', '.join(names.SCENARIOS)}")
        for label, value, low, high in (("workers", self.workers, 1, MAX_WORKERS),
                                        ("tasks", self.tasks, 1, 1_000_000),
                                        ("iterations", self.iterations, 1, 1_000_000),
                                        ("heartbeats", self.heartbeats, 0, 100),
                                        ("hot tasks", self.hot_tasks, 1, 1_000_000)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise errors.InvalidArgument(f"{label} must be an integer from {low} to {high}")
        for label, rate in (("failRate", self.fail_rate), ("stall rate", self.stall_rate)):
            if not 0.0 <= rate <= 1.0:
                raise errors.InvalidArgument(f"{label} must be between 0 and 1")
        if not 0 < self.ttl <= 3600 or not 0 < self.max_seconds <= 86_400 or not 0 <= self.work <= 60_000:
            raise errors.InvalidArgument("ttl, max seconds and work ms must be positive and bounded")
        return self


@dataclass(frozen=True)
class DrainReport:
    """What the runner itself did after the agents stopped."""

    recovered: int = 0
    dead_lettered: int = 0
    finished: int = 0  # tasks the drain claimed and released done
    seconds: float = 0.0
    left: int = 0  # pending or leased when the drain gave up


@dataclass
class RunResult:
    config: RunConfig
    store_url: str
    backend: str
    queue: str
    stats: LocustStats
    drain: DrainReport
    metrics: MetricsReport
    history: HistoryReport
    crosscheck: list[str] = field(default_factory=list)  # disagreements; empty is good
    problems: list[str] = field(default_factory=list)  # the run itself went wrong

    @property
    def ok(self) -> bool:
        return self.history.ok and not self.crosscheck and not self.problems

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "scenario": self.config.scenario, "backend": self.backend, "queue": self.queue,
            "workers": self.config.workers, "tasks": self.config.tasks, "iterations": self.config.iterations,
            "fail_rate": self.config.fail_rate, "ttl": self.config.ttl,
            "duration_seconds": s.duration, "throughput_cycles_per_second": s.throughput,
            "claims": s.claims, "releases": s.releases,
            "busy_ratio": s.ratio(names.CLAIM_BUSY), "no_task_ratio": s.ratio(names.CLAIM_NO_TASK),
            "requests": dict(s.requests), "failures": dict(s.failures),
            "operations": {op: o.as_dict() for op, o in s.operations.items()},
            "drain": self.drain.__dict__, "metrics": self.metrics.as_dict(),
            "invariants": {"ok": self.history.ok, "summary": self.history.summary(),
                           "violations": [str(v) for v in self.history.violations]},
            "crosscheck": self.crosscheck, "problems": self.problems, "verdict": self.verdict,
        }


@dataclass
class RegressionResult:
    rounds: list[RunResult]
    tolerance: float
    regressions: list[str]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds) and not self.regressions


# --- public entry points ------------------------------------------------------

def run_concurrency(*, workers: int = 4, tasks: int = 200, iterations: int = 25, fail_rate: float = 0.1,
                    ttl: float = 5.0, report_dir: str | Path = "out/phase3-concurrency",
                    db_url: str | None = None, scenario: str = "drain", console: Console | None = None,
                    **options: Any) -> RunResult:
    """The seed's ``phase3 concurrency``: one run, summary printed, result returned."""
    config = RunConfig(Path(report_dir), scenario, workers, tasks, iterations, fail_rate, ttl, db_url,
                       **options).validate()
    return run_scenario(config, console or Console(highlight=False))


def run_regression(*, rounds: int = 3, workers: int = 3, tasks: int = 120, iterations: int = 60,
                   fail_rate: float = 0.08, ttl: float = 5.0, report_dir: str | Path = "out/phase3-regression",
                   db_url: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                   console: Console | None = None, **options: Any) -> RegressionResult:
    """The seed's ``phase3 regression``: ``rounds`` drain runs on one store, each
    compared with the first."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise errors.InvalidArgument("rounds must be an integer from 1 to 100")
    if not 0 <= tolerance <= 100:
        raise errors.InvalidArgument("tolerance must be between 0 and 100")
    console = console or Console(highlight=False)
    root = Path(report_dir)
    store_url = db_url
    results: list[RunResult] = []
    for number in range(1, rounds + 1):
        console.rule(f"round {number}/{rounds}")
        config = RunConfig(root / f"round-{number}", "drain", workers, tasks, iterations, fail_rate, ttl,
                           store_url, **options).validate()
        # Every round after the first reuses the first round's store: a store
        # that slows down as its tables grow is what a regression run is for.
        result = run_scenario(config, console, exclusive=db_url is None,
                              store_path=root / "store.db" if db_url is None else None,
                              fresh=number == 1)
        store_url = result.store_url
        results.append(result)
    regressions = compare_rounds([r.stats for r in results], tolerance)
    print_regression(console, results, regressions, tolerance)
    return RegressionResult(results, tolerance, regressions)


def compare_rounds(rounds: list[LocustStats], tolerance: float) -> list[str]:
    """Each later round against the first: throughput and p95 of claim and release."""
    if len(rounds) < 2:
        return []
    base = rounds[0]
    found = []
    for number, stats in enumerate(rounds[1:], start=2):
        floor = base.throughput / (1 + tolerance)
        if stats.throughput < floor:
            found.append(f"round {number}: throughput {stats.throughput:.0f}/s is below "
                         f"{floor:.0f}/s (round 1: {base.throughput:.0f}/s, tolerance {tolerance:g})")
        for op in ("claim", "release"):
            before, after = base.operations.get(op), stats.operations.get(op)
            if before is None or after is None:
                continue
            ceiling = max(before.p95 * (1 + tolerance), before.p95 + P95_NOISE_FLOOR_MS)
            if after.p95 > ceiling:
                found.append(f"round {number}: {op} p95 {after.p95:.2f} ms is above {ceiling:.2f} ms "
                             f"(round 1: {before.p95:.2f} ms)")
    return found


# --- one run ------------------------------------------------------------------

def run_scenario(config: RunConfig, console: Console, *, exclusive: bool | None = None,
                 store_path: Path | None = None, fresh: bool = True,
                 before_verdict: BeforeVerdict | None = None) -> RunResult:
    """Seed, run locust, drain, check, print; ``before_verdict`` lets a test
    tamper with the store between the run and its verdict."""
    config.report_dir.mkdir(parents=True, exist_ok=True)
    url = config.db_url or str(store_path or config.report_dir / "store.db")
    if config.db_url is None and fresh:
        _remove_sqlite_files(Path(url))
    exclusive = config.db_url is None if exclusive is None else exclusive
    run_id = uuid.uuid4().hex[:8]
    queue, prefix = f"phase3-{config.scenario}-{run_id}", f"p3-{run_id}"
    with LeaseStore(url, retry_policy=names.LOAD_RETRY_POLICY) as store:
        _enqueue(store, queue, prefix, config.tasks)
        started_at = store.now()
        problems = _run_locust(config, store, url, queue, prefix, console)
        logged_by_locust_phase = _lock_outcomes(store, queue)
        drain = drain_queue(store, queue, config.ttl)
        if drain.left:
            problems.append(f"drain gave up with {drain.left} task(s) unfinished")
        stats = read_run(config.report_dir / "locust.json", config.report_dir / "samples")
        if before_verdict is not None:
            before_verdict(store, queue)
        history = check_run(store, queue)
        # Ends at compute_metrics' own (later) clock reading, so it starts at
        # or just before the run: an earlier run's rows stay out.
        window = (store.now() - started_at) / 60 + 1e-5
        metrics = compute_metrics(store, window)
        crosscheck = crosscheck_counts(stats, logged_by_locust_phase)
        crosscheck += [str(v) for v in check_metrics(store, window)]  # invariant 5
        if exclusive:
            crosscheck += crosscheck_metrics(stats, metrics)
        result = RunResult(config, url, store.backend, queue, stats, drain, metrics, history,
                           crosscheck, problems)
    (config.report_dir / "summary.json").write_text(json.dumps(result.as_dict(), indent=2, default=str))
    print_summary(console, result)
    return result


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _enqueue(store: LeaseStore, queue: str, prefix: str, count: int, batch: int = 1000) -> None:
    for start in range(0, count, batch):
        ids = [names.task_id(prefix, i) for i in range(start, min(count, start + batch))]
        store.enqueue_many(queue, [{"n": int(i.rsplit("-", 1)[1])} for i in ids], task_ids=ids)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locust_command(config: RunConfig, url: str, queue: str, prefix: str, port: int) -> list[str]:
    """``locust --headless --processes N``: N forked workers and their master,
    talking over a loopback port, one agent per worker."""
    out = config.report_dir
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--processes", str(config.workers), "-u", str(config.workers), "-r", str(config.workers),
        "--run-time", f"{int(config.max_seconds)}s", "--stop-timeout", "10",
        "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--master-host", "127.0.0.1", "--master-port", str(port),
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--json-file", str(out / "locust"), "--logfile", str(out / "locust.log"),
        "--exit-code-on-error", "0",
        "--store-url", url, "--queue", queue, "--task-prefix", prefix,
        "--task-count", str(config.tasks), "--iterations", str(config.iterations),
        "--fail-rate", str(config.fail_rate), "--lease-ttl", str(config.ttl),
        "--heartbeats", str(config.heartbeats), "--work-ms", str(config.work),
        "--hot-tasks", str(config.hot_tasks), "--stall-rate", str(config.stall_rate),
        "--agents", str(config.workers), "--samples-dir", str(out / "samples"),
        "--seed", str(config.seed),
        names.USER_CLASS[config.scenario],
    ]


def _run_locust(config: RunConfig, store: LeaseStore, url: str, queue: str, prefix: str,
                console: Console) -> list[str]:
    samples = config.report_dir / "samples"
    samples.mkdir(exist_ok=True)
    for old in [*samples.glob("samples-*.json"), config.report_dir / "locust.json"]:
        old.unlink(missing_ok=True)
    command = locust_command(config, url, queue, prefix, _free_loopback_port())
    problems: list[str] = []
    deadline = time.monotonic() + config.max_seconds + 30
    with open(config.report_dir / "locust.out", "wb") as log, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tasks"),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=True) as progress:
        bar = progress.add_task(f"{config.scenario}: {config.workers} agents", total=config.tasks, detail="")
        # Its own session, so a run past its deadline is stopped with every worker.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    problems.append(f"locust did not finish within {config.max_seconds + 30:.0f} s")
                    break
                counts = _queue_counts(store, queue)
                progress.update(bar, completed=counts["done"] + counts["dead"],
                                detail=f"leased {counts['leased']} dead {counts['dead']}")
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode not in (0, None) and not problems:
        problems.append(f"locust exited with code {proc.returncode} (see {config.report_dir / 'locust.out'})")
    return problems


def _queue_counts(store: LeaseStore, queue: str) -> Counter[str]:
    counts: Counter[str] = Counter({"pending": 0, "leased": 0, "done": 0, "dead": 0})
    for row in store.status_summary()["counts"]:
        if row["queue"] == queue:
            counts[row["status"]] += int(row["count"])
    return counts


def drain_queue(store: LeaseStore, queue: str, ttl: float) -> DrainReport:
    """Finish what the agents left: wait out their leases, recover, claim the rest.

    After this every task of the queue is done or dead, so the history check
    can require a drained queue (invariant 3) rather than excuse leftovers.
    """
    started = time.monotonic()
    deadline = started + ttl + DRAIN_SECONDS
    recovered = dead = finished = 0
    while time.monotonic() < deadline:
        claim = store.claim_task(queue, DRAIN_OWNER, ttl=DRAIN_TTL, additional=True)
        if claim.lease is not None:
            store.release_task(claim.lease, "done")
            finished += 1
            continue
        counts = _queue_counts(store, queue)
        if not counts["pending"] and not counts["leased"]:
            break
        report = store.recover_stale()
        recovered += report.recovered
        dead += report.dead_lettered
        if not report.recovered:
            time.sleep(0.05)
    counts = _queue_counts(store, queue)
    return DrainReport(recovered, dead, finished, time.monotonic() - started,
                       counts["pending"] + counts["leased"])


# --- verdict ------------------------------------------------------------------

def check_run(store: LeaseStore, queue: str) -> HistoryReport:
    """Invariants 1-4 on the run's own tasks (its queue), from one snapshot."""
    return check_history(store, queue=queue, require_drained=True)


def _lock_outcomes(store: LeaseStore, queue: str) -> Counter[str]:
    d = store.database.driver
    return Counter(dict(store.database.read(lambda now: d.lock_outcome_counts(queue))))


def crosscheck_counts(stats: LocustStats, logged: Counter[str]) -> list[str]:
    """Locust's successful requests against the ``lock_events`` rows of the run.

    Read before the drain, so both sides cover only what the agents did.
    """
    expected: Counter[str] = Counter()
    for name, outcome in names.LOCK_OUTCOME_OF.items():
        expected[outcome] += stats.requests[name]
    expected[names.FAILURE_LOCK_OUTCOME] += (stats.failures_by_operation["heartbeat"]
                                             + stats.failures_by_operation["release"])
    problems = []
    for outcome in sorted(expected.keys() | (logged.keys() & set(expected))):
        if expected[outcome] != logged[outcome]:
            problems.append(f"lock_events has {logged[outcome]} '{outcome}' rows, locust recorded {expected[outcome]}")
    return problems


def crosscheck_metrics(stats: LocustStats, metrics: MetricsReport) -> list[str]:
    """On a store the run had to itself, two of the seven must equal locust's counts
    (the drain neither conflicts nor resumes)."""
    pairs = (
        ("lockConflictEvents", stats.requests[names.CLAIM_BUSY] + stats.failures_by_operation["heartbeat"]
         + stats.failures_by_operation["release"]),
        ("duplicateSuppressed", stats.requests[names.CLAIM_RESUMED]),
    )
    return [f"metric {key} is {metrics[key].value:g}, locust recorded {count}"
            for key, count in pairs if metrics[key].value != count]


# --- output -------------------------------------------------------------------

def print_summary(console: Console, result: RunResult) -> None:
    c, s = result.config, result.stats
    console.print(f"[bold]phase3 {c.scenario}[/] on {result.backend}: {c.workers} workers, {c.tasks} tasks, "
                  f"{c.iterations} iterations, failRate {c.fail_rate:g}, ttl {c.ttl:g} s, queue {result.queue}")
    console.print(f"throughput {s.throughput:.1f} cycles/s ({s.releases} releases, {s.claims} claims "
                  f"in {s.duration:.2f} s); busy ratio {s.ratio(names.CLAIM_BUSY):.3f}, "
                  f"noTask ratio {s.ratio(names.CLAIM_NO_TASK):.3f}")
    ops = Table(title="latency by operation (ms)")
    for column in ("operation", "requests", "failures", "p50", "p95", "p99", "avg"):
        ops.add_column(column, justify="left" if column == "operation" else "right")
    for op in s.operations.values():
        ops.add_row(op.operation, str(op.requests), str(op.failures), f"{op.p50:.2f}", f"{op.p95:.2f}",
                    f"{op.p99:.2f}", f"{op.average:.2f}")
    console.print(ops)
    outcomes = Table(title="outcomes (locust request names)")
    outcomes.add_column("request")
    outcomes.add_column("ok", justify="right")
    outcomes.add_column("failed", justify="right")
    for name in sorted(s.requests.keys() | s.failures.keys()):
        outcomes.add_row(name, str(s.requests[name]), str(s.failures[name]))
    console.print(outcomes)
    d = result.drain
    console.print(f"drain: {d.finished} finished, {d.recovered} recovered, {d.dead_lettered} dead-lettered "
                  f"in {d.seconds:.1f} s, {d.left} left")
    metrics = Table(title=f"metrics over the run ({result.metrics.window_minutes:.2f} min)")
    for column in ("metric", "value", "threshold", "state"):
        metrics.add_column(column)
    for v in result.metrics.values:
        metrics.add_row(v.definition.key, f"{v.value:g}", f"{v.threshold:g}",
                        "[bold red]ALERT[/]" if v.alert else "ok")
    console.print(metrics)
    console.print(f"invariants: {result.history.summary()}")
    for line in result.crosscheck + result.problems:
        console.print(f"[red]✗[/] {line}")
    console.print(f"reports: {c.report_dir}/locust.html, {c.report_dir}/locust_stats.csv, "
                  f"{c.report_dir}/summary.json")
    console.print(f"verdict: {'[bold green]PASS[/]' if result.ok else '[bold red]FAIL[/]'}")


def print_regression(console: Console, results: list[RunResult], regressions: list[str],
                     tolerance: float) -> None:
    table = Table(title=f"regression against round 1 (tolerance {tolerance:g}: at most {1 + tolerance:g}x worse)")
    for column in ("round", "cycles/s", "claim p95 ms", "release p95 ms", "busy", "noTask", "invariants"):
        table.add_column(column, justify="right")
    for number, r in enumerate(results, start=1):
        ops = r.stats.operations
        table.add_row(str(number), f"{r.stats.throughput:.1f}",
                      f"{ops['claim'].p95:.2f}" if "claim" in ops else "-",
                      f"{ops['release'].p95:.2f}" if "release" in ops else "-",
                      f"{r.stats.ratio(names.CLAIM_BUSY):.3f}", f"{r.stats.ratio(names.CLAIM_NO_TASK):.3f}",
                      r.verdict)
    console.print(table)
    for line in regressions:
        console.print(f"[red]✗[/] {line}")
    ok = all(r.ok for r in results) and not regressions
    console.print(f"regression verdict: {'[bold green]PASS[/]' if ok else '[bold red]FAIL[/]'}")
