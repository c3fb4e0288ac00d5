"""``leasestore demo``: agent processes drain a queue; one is killed mid-task.

The parent enqueues tasks, starts worker processes (``python -m
leasestore.demo worker …``), SIGKILLs one of them while it holds a lease,
runs ``recover_stale`` as an operator's sweeper would, and ends with the task
the victim held finished by another agent and the metrics report.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TextColumn
from rich.text import Text

from .console import print_metrics, progress
from .errors import InvalidArgument, LeaseLost
from .metrics import MetricsReport, compute_metrics
from .retry import RetryPolicy
from .store import LeaseStore
from .validation import positive_int

QUEUE = "demo"
LEASE_TTL = 1.0
MAX_DEMO_WORKERS = 32
MAX_DEMO_TASKS = 10_000
WORK_SECONDS = 0.25
FAIL_RATE = 0.15
DEADLINE_SECONDS = 90.0


def worker(db: str, owner: str, seed: int) -> int:
    """One agent: claim, work in steps with checkpoints, release; stop when the queue is drained."""
    rng = random.Random(seed)
    store = LeaseStore(db, init=False)
    while True:
        try:
            with store.lease(QUEUE, owner, ttl=LEASE_TTL) as job:
                if job is None:
                    if _drained(store):
                        return 0
                    time.sleep(0.05)
                    continue
                start = (job.lease.checkpoint or {}).get("step", 0)
                for step in range(start, 5):
                    job.ensure_held()
                    time.sleep(WORK_SECONDS / 5)
                    job.checkpoint({"step": step + 1, "by": owner})
                if rng.random() < FAIL_RATE:
                    raise RuntimeError("simulated tool failure")
        except RuntimeError:
            continue
        except LeaseLost:
            continue


def _drained(store: LeaseStore) -> bool:
    counts = {row["status"]: row["count"] for row in store.status_summary()["counts"] if row["queue"] == QUEUE}
    return not counts.get("pending") and not counts.get("leased")


@dataclass
class DemoResult:
    """What a demo run ended with (``leasestore demo --json`` prints it)."""

    store: str
    workers: int
    tasks: int
    seconds: float
    counts: dict[str, int]
    killed: str | None = None  # the agent that was SIGKILLed
    victim_task: str | None = None  # the task it held
    victim_history: list[dict[str, Any]] = field(default_factory=list)
    metrics: MetricsReport | None = None

    @property
    def ok(self) -> bool:
        return self.counts.get("pending", 0) == 0 and self.counts.get("leased", 0) == 0

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, "workers": self.workers, "tasks": self.tasks, "seconds": self.seconds,
                "counts": self.counts, "killed_agent": self.killed, "victim_task": self.victim_task,
                "victim_history": self.victim_history, "ok": self.ok,
                "metrics": self.metrics.as_dict() if self.metrics is not None else None}


def run_demo(*, workers: int, tasks: int, db: str | None, console: Console,
             live: Console | None = None) -> DemoResult:
    """The demo; narration on ``console``, progress on ``live`` (None: no progress)."""
    # One agent is killed on purpose: at least one more must be left to drain.
    if isinstance(workers, bool) or not isinstance(workers, int) or not 2 <= workers <= MAX_DEMO_WORKERS:
        raise InvalidArgument(f"workers must be an integer from 2 to {MAX_DEMO_WORKERS} (one is killed)")
    tasks = positive_int(tasks, "tasks", MAX_DEMO_TASKS)
    if db is None:
        db = str(Path(tempfile.mkdtemp(prefix="leasestore-demo-")) / "orchestrator.db")
    store = LeaseStore(db, retry_policy=RetryPolicy(base=0.2, cap=1.0))
    where = store.url.render_as_string(hide_password=True)
    console.print(Text("leasestore demo", style="bold") + Text(f" on {where}"))
    store.enqueue_many(QUEUE, [{"n": i} for i in range(tasks)], max_attempts=3)
    console.print(f"enqueued {tasks} tasks; starting {workers} agent processes (lease TTL {LEASE_TTL:g} s)",
                  markup=False)
    procs = {
        f"agent-{i}": subprocess.Popen([sys.executable, "-m", "leasestore.demo", "worker", db, f"agent-{i}", str(i)])
        for i in range(workers)
    }
    victim: tuple[str, str] | None = None
    start = time.monotonic()
    try:
        victim = _kill_one_holder(store, procs, console)
        with progress(live, TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}")) as bar:
            shown = bar.add_task("draining", total=tasks)
            while time.monotonic() - start < DEADLINE_SECONDS:
                report = store.recover_stale()
                if report.recovered or report.dead_lettered:
                    console.print(f"recover_stale: recovered {report.recovered}, dead-lettered {report.dead_lettered}",
                                  markup=False)
                counts = _counts(store)
                bar.update(shown, completed=counts.get("done", 0) + counts.get("dead", 0))
                if _drained(store) and all(p.poll() is not None for p in procs.values()):
                    break
                time.sleep(0.2)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    counts = _counts(store)
    result = DemoResult(where, workers, tasks, round(time.monotonic() - start, 3), counts)
    console.print(f"tasks: {counts.get('done', 0)} done, {counts.get('dead', 0)} dead-lettered, "
                  f"{counts.get('pending', 0)} pending, {counts.get('leased', 0)} leased "
                  f"in {result.seconds:.1f} s", markup=False)
    if victim is not None:
        result.killed, result.victim_task = victim
        result.victim_history = store.events(task_id=result.victim_task, limit=50)
        console.print(f"history of {result.victim_task}, the task held by the killed agent:", markup=False)
        for event in result.victim_history:
            fence = event["fencing_token"] if event["fencing_token"] is not None else "-"
            console.print(f"  {event['kind']:<16} owner={event['owner'] or '-':<8} fence={fence}", markup=False)
    result.metrics = compute_metrics(store, 60)
    print_metrics(console, result.metrics)
    store.close()
    return result


def _counts(store: LeaseStore) -> dict[str, int]:
    return {row["status"]: row["count"] for row in store.status_summary()["counts"] if row["queue"] == QUEUE}


def _kill_one_holder(store: LeaseStore, procs: dict[str, subprocess.Popen[bytes]],
                     console: Console) -> tuple[str, str] | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for lease in store.status_summary()["leases"]:
            proc = procs.get(lease["owner"])
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                console.print(Text("SIGKILL", style="bold red") + Text(
                    f" {lease['owner']} while it held task {lease['task_id']} (fence {lease['fencing_token']}); "
                    "its lease will expire and be recovered"))
                return str(lease["owner"]), str(lease["task_id"])
        time.sleep(0.05)
    return None


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.exit("usage: python -m leasestore.demo worker DB OWNER SEED")
