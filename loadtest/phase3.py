"""The phase-3 runs: locust in real processes against a real store, then a verdict.

:func:`run_scenario` enqueues a run's tasks in a queue of its own, runs
``locust --headless --processes N`` (one agent per process, locust's
master/worker mode over loopback), shows progress from the database while it
runs, drains what the agents left, and checks the result:

* the figures: throughput and latency percentiles from the measured window
  only (every agent running; ``loadtest.report``), "too short to measure"
  instead of a rate when that window is too short, and how much of the work
  the load run did and how much the runner's final drain did;

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
import math
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
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from leasestore import LeaseStore, errors
from leasestore.console import Cell, Column, print_rows, progress
from leasestore.history import HistoryReport, check_history, check_metrics
from leasestore.metrics import MetricsReport, compute_metrics

from . import names
from .report import MIN_WINDOW_CYCLES, MIN_WINDOW_SECONDS, LocustStats, read_run

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_MAX_SECONDS = 300.0
# Exit codes of the regression command.
EXIT_PASS, EXIT_FAIL, EXIT_INCONCLUSIVE = 0, 1, 5
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


@dataclass(frozen=True)
class WorkSplit:
    """Who finished the run's tasks: the agents under load, or the runner's drain."""

    tasks: int
    load_done: int
    load_dead: int
    drain_done: int
    drain_dead: int
    left: int

    @property
    def by_load(self) -> int:
        return self.load_done + self.load_dead

    @property
    def by_drain(self) -> int:
        return self.drain_done + self.drain_dead

    def share(self, count: int) -> float:
        return count / self.tasks if self.tasks else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks,
                "load": {"finished": self.by_load, "done": self.load_done, "dead": self.load_dead,
                         "share": self.share(self.by_load)},
                "drain": {"finished": self.by_drain, "done": self.drain_done, "dead": self.drain_dead,
                          "share": self.share(self.by_drain)},
                "left": self.left}


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
    work: WorkSplit | None = None

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
            "duration_seconds": s.duration, "window": s.window.as_dict(),
            "throughput_cycles_per_second": s.throughput, "too_short_to_measure": s.window.too_short,
            "suggestion": suggestion(self),
            "work": self.work.as_dict() if self.work is not None else None,
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
    unmeasured: list[str] = field(default_factory=list)  # rounds too short to compare

    @property
    def verdict(self) -> str:
        """PASS, FAIL (a failed round or a regression) or INCONCLUSIVE (rounds too
        short to measure, so no performance was compared)."""
        if not all(r.ok for r in self.rounds) or self.regressions:
            return "FAIL"
        return "INCONCLUSIVE" if self.unmeasured else "PASS"

    @property
    def ok(self) -> bool:
        return self.verdict == "PASS"

    @property
    def exit_code(self) -> int:
        return {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL}.get(self.verdict, EXIT_INCONCLUSIVE)

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": [r.as_dict() for r in self.rounds], "tolerance": self.tolerance,
                "regressions": self.regressions, "unmeasured": self.unmeasured, "verdict": self.verdict}


# --- public entry points ------------------------------------------------------

def run_concurrency(*, workers: int = 4, tasks: int = 200, iterations: int = 25, fail_rate: float = 0.1,
                    ttl: float = 5.0, report_dir: str | Path = "out/phase3-concurrency",
                    db_url: str | None = None, scenario: str = "drain", console: Console | None = None,
                    live: Console | None = None, **options: Any) -> RunResult:
    """The seed's ``phase3 concurrency``: one run, summary printed on ``console``,
    progress on ``live`` (None: none), result returned."""
    config = RunConfig(Path(report_dir), scenario, workers, tasks, iterations, fail_rate, ttl, db_url,
                       **options).validate()
    return run_scenario(config, console or Console(highlight=False), live=live)


def run_regression(*, rounds: int = 3, workers: int = 3, tasks: int = 120, iterations: int = 60,
                   fail_rate: float = 0.08, ttl: float = 5.0, report_dir: str | Path = "out/phase3-regression",
                   db_url: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                   console: Console | None = None, live: Console | None = None,
                   **options: Any) -> RegressionResult:
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
                              fresh=number == 1, live=live)
        store_url = result.store_url
        results.append(result)
    stats = [r.stats for r in results]
    regression = RegressionResult(results, tolerance, compare_rounds(stats, tolerance), unmeasured_rounds(stats))
    print_regression(console, regression)
    return regression


def unmeasured_rounds(rounds: list[LocustStats]) -> list[str]:
    """The rounds whose measured window is too short to compare."""
    return [f"round {number}: too short to measure ({stats.window.too_short})"
            for number, stats in enumerate(rounds, start=1) if stats.throughput is None]


def compare_rounds(rounds: list[LocustStats], tolerance: float) -> list[str]:
    """Each later round against the first: throughput and p95 of claim and release,
    each from its measured window. A round too short to measure (or a first round
    that is) is not compared: see :func:`unmeasured_rounds`."""
    if len(rounds) < 2 or rounds[0].throughput is None:
        return []
    base = rounds[0]
    assert base.throughput is not None
    found = []
    for number, stats in enumerate(rounds[1:], start=2):
        if stats.throughput is None:
            continue
        floor = base.throughput / (1 + tolerance)
        if stats.throughput < floor:
            found.append(f"round {number}: throughput {stats.throughput:.0f}/s is below "
                         f"{floor:.0f}/s (round 1: {base.throughput:.0f}/s, tolerance {tolerance:g})")
        for op in ("claim", "release"):
            before, after = base.operations.get(op), stats.operations.get(op)
            if before is None or after is None or before.p95 is None or after.p95 is None:
                continue
            ceiling = max(before.p95 * (1 + tolerance), before.p95 + P95_NOISE_FLOOR_MS)
            if after.p95 > ceiling:
                found.append(f"round {number}: {op} p95 {after.p95:.2f} ms is above {ceiling:.2f} ms "
                             f"(round 1: {before.p95:.2f} ms)")
    return found


# --- one run ------------------------------------------------------------------

def run_scenario(config: RunConfig, console: Console, *, exclusive: bool | None = None,
                 store_path: Path | None = None, fresh: bool = True,
                 before_verdict: BeforeVerdict | None = None, live: Console | None = None) -> RunResult:
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
        problems = _run_locust(config, store, url, queue, prefix, live)
        logged_by_locust_phase = _lock_outcomes(store, queue)
        after_load = _queue_counts(store, queue)
        with progress(live, TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
            bar.add_task(f"final drain: {after_load['pending'] + after_load['leased']} tasks left by the agents",
                         total=None)
            drain = drain_queue(store, queue, config.ttl)
        if drain.left:
            problems.append(f"drain gave up with {drain.left} task(s) unfinished")
        final = _queue_counts(store, queue)
        work = WorkSplit(config.tasks, after_load["done"], after_load["dead"], final["done"] - after_load["done"],
                         final["dead"] - after_load["dead"], final["pending"] + final["leased"])
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
                           crosscheck, problems, work)
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
                live: Console | None) -> list[str]:
    samples = config.report_dir / "samples"
    samples.mkdir(exist_ok=True)
    for old in [*samples.glob("samples-*.json"), config.report_dir / "locust.json"]:
        old.unlink(missing_ok=True)
    command = locust_command(config, url, queue, prefix, _free_loopback_port())
    problems: list[str] = []
    deadline = time.monotonic() + config.max_seconds + 30
    with open(config.report_dir / "locust.out", "wb") as log, progress(
            live, TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} tasks"),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn()) as shown:
        bar = shown.add_task(f"load run, {config.scenario}: {config.workers} agents", total=config.tasks, detail="")
        # Its own session, so a run past its deadline is stopped with every worker.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    problems.append(f"locust did not finish within {config.max_seconds + 30:.0f} s")
                    break
                if live is not None:
                    counts = _queue_counts(store, queue)
                    shown.update(bar, completed=counts["done"] + counts["dead"],
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


# --- output ---------------------------------------------------------------------

def suggestion(result: RunResult) -> str | None:
    """For a run too short to measure: sizes that would give a measurable window."""
    s, c = result.stats, result.config
    if s.throughput is not None or s.window.agents == 0:
        return None
    seconds, cycles = s.window.seconds, s.window.cycles
    # Scale the run until the window holds both minimums, with room to spare.
    factor = 1.5 * max(MIN_WINDOW_SECONDS / seconds if seconds > 0 else 10.0,
                       MIN_WINDOW_CYCLES / cycles if cycles > 0 else 10.0, 1.0)
    iterations = max(c.iterations + 1, math.ceil(c.iterations * factor))
    # About as many tasks as the agents can finish, failures (retried) included.
    tasks = max(c.tasks, math.floor(iterations * c.workers * (1 - c.fail_rate)))
    return f"--iterations {iterations} --tasks {tasks}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_summary(console: Console, result: RunResult) -> None:
    c, s = result.config, result.stats
    console.print(Text(f"phase3 {c.scenario}", style="bold") + Text(
        f" on {result.backend}: {c.workers} workers, {c.tasks} tasks, {c.iterations} iterations, "
        f"failRate {c.fail_rate:g}, ttl {c.ttl:g} s, queue {result.queue}"))
    if result.work is not None:
        w = result.work
        console.print(f"work: the load run finished {w.by_load} of {w.tasks} tasks ({w.share(w.by_load):.0%}: "
                      f"{w.load_done} done, {w.load_dead} dead-lettered) with {s.claims} claims; the final drain "
                      f"finished {w.by_drain} ({w.share(w.by_drain):.0%}: {w.drain_done} done, {w.drain_dead} "
                      f"dead-lettered) in {result.drain.seconds:.1f} s" + (f"; {w.left} left" if w.left else ""),
                      markup=False)
        if w.by_drain > w.by_load:
            console.print(f"note: most of the work was the drain's: {c.workers} agents × {c.iterations} iterations "
                          f"make at most {c.workers * c.iterations} claims for {c.tasks} tasks", markup=False)
    window = s.window
    console.print(f"measured window: {window.seconds:.3f} s with all {window.agents} agents running, "
                  f"{window.cycles} cycles, {window.calls} calls (whole load run {s.duration:.3f} s, "
                  f"{s.releases} releases)", markup=False)
    if s.throughput is None:
        hint = suggestion(result)
        console.print(Text("too short to measure: ", style="bold yellow") + Text(
            f"{window.too_short}; no throughput or percentiles are given"
            + (f" (for figures, try {hint})" if hint else "")))
    else:
        console.print(f"throughput {s.throughput:.1f} cycles/s in the measured window", markup=False)
    console.print(f"busy ratio {s.ratio(names.CLAIM_BUSY):.3f}, noTask ratio {s.ratio(names.CLAIM_NO_TASK):.3f} "
                  f"(all {s.claims} claims)", markup=False)
    print_rows(console, "latency by operation, ms, in the measured window",
               [Column("operation"), Column("calls", justify="right"), Column("failed", justify="right"),
                Column("in window", justify="right"), Column("p50", justify="right"), Column("p95", justify="right"),
                Column("p99", justify="right"), Column("avg", justify="right")],
               [[op.operation, str(op.requests), str(op.failures), str(op.in_window), _ms(op.p50), _ms(op.p95),
                 _ms(op.p99), _ms(op.average)] for op in s.operations.values()])
    print_rows(console, "outcomes (locust request names, whole load run)",
               [Column("request"), Column("ok", justify="right"), Column("failed", justify="right")],
               [[name, str(s.requests[name]), str(s.failures[name])]
                for name in sorted(s.requests.keys() | s.failures.keys())])
    d = result.drain
    console.print(f"drain: {d.finished} finished, {d.recovered} recovered, {d.dead_lettered} dead-lettered "
                  f"in {d.seconds:.1f} s, {d.left} left", markup=False)
    rows: list[list[Cell]] = [[v.definition.key, f"{v.value:g}", f"{v.threshold:g}",
                               Text("ALERT", style="bold red") if v.alert else Text("ok")]
                              for v in result.metrics.values]
    print_rows(console, f"metrics over the run, drain included ({result.metrics.window_minutes:.2f} min)",
               [Column("metric"), Column("value", justify="right"), Column("threshold", justify="right"),
                Column("state")], rows)
    console.print(f"invariants: {result.history.summary()}", markup=False)
    for line in result.crosscheck + result.problems:
        console.print(Text("✗ ", style="red") + Text(line))
    console.print(f"reports: {c.report_dir}/locust.html, {c.report_dir}/locust_stats.csv, "
                  f"{c.report_dir}/summary.json", markup=False)
    console.print(Text("verdict: ") + (Text("PASS", style="bold green") if result.ok else Text("FAIL", style="bold red")))


def print_regression(console: Console, regression: RegressionResult) -> None:
    rows: list[list[Cell]] = []
    for number, r in enumerate(regression.rounds, start=1):
        ops = r.stats.operations
        rows.append([str(number), "too short" if r.stats.throughput is None else f"{r.stats.throughput:.1f}",
                     _ms(ops["claim"].p95) if "claim" in ops else "-",
                     _ms(ops["release"].p95) if "release" in ops else "-",
                     f"{r.stats.window.seconds:.3f}", r.verdict])
    tolerance = regression.tolerance
    print_rows(console, f"regression against round 1 (tolerance {tolerance:g}: at most {1 + tolerance:g}x worse; "
                        "p95 in ms; each round's measured window)",
               [Column(name, justify="right") for name in
                ("round", "cycles/s", "claim p95", "release p95", "window s", "invariants")],
               rows)
    for line in regression.regressions:
        console.print(Text("✗ ", style="red") + Text(line))
    for line in regression.unmeasured:
        console.print(Text("? ", style="yellow") + Text(line))
    if regression.unmeasured:
        console.print("performance not compared: a round too short to measure cannot show a regression; "
                      "give the rounds more --iterations and --tasks", markup=False)
    style = {"PASS": "bold green", "FAIL": "bold red"}.get(regression.verdict, "bold yellow")
    console.print(Text("regression verdict: ") + Text(regression.verdict, style=style))
