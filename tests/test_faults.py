"""Fault injection with real processes on real databases: kills, pauses, disconnects, contention, full disks.

Each test prints one ``FAULT-FIGURES`` line: ``pytest -s -k faults`` shows them.
Time is bounded by the lease TTL and the recovery loop interval S (the sweeper
below); every figure is read back from the store itself.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chaos import (
    Figures,
    Sweeper,
    Worker,
    merged_errors,
    pg_role,
    snapshot,
    sqlite_integrity,
    start_together,
    terminate_backends,
    wait_all,
)
from conftest import PG_DSN, require, require_binary
from leasestore import NO_BACKOFF, ClaimStatus, LeaseStore, StoreFull, StoreReadOnly, StoreUnavailable
from leasestore.history import check_history
from leasestore.metrics import compute_metrics

TTL = 0.6  # lease time to live in the multi-process runs (heartbeat every TTL/3)
SWEEP = 0.25  # S: the recovery loop interval
# Scheduling slack on a loaded 2-core machine: process start-up, GC, the other tests.
SLACK = 1.0


def backend_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else "sqlite"


def fill(store: LeaseStore, n: int, queue: str = "chaos") -> None:
    store.enqueue_many(queue, [{"n": i} for i in range(n)], task_ids=[f"task-{i:04d}" for i in range(n)])


def leased_owners(store: LeaseStore) -> set[str]:
    return {t.owner for t in store.list_tasks(status="leased", limit=10_000) if t.owner}


def wait_for_holders(store: LeaseStore, owners: set[str], need: int, timeout: float = 30) -> None:
    """Worker processes take a while to start on 2 cores: faults begin once they work."""
    deadline = time.monotonic() + timeout
    while len(leased_owners(store) & owners) < need:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)


def assert_history_clean(store: LeaseStore, url: str) -> Any:
    report = check_history(store)
    assert report.ok, report.summary()
    if backend_of(url) == "sqlite":
        assert sqlite_integrity(url) == "ok"
    return report


@pytest.mark.slow
def test_faults_sigkill_storm(db_url: str, face: str, tmp_path: Path) -> None:
    """8 workers, 240 tasks; 12 SIGKILLs at random points, each followed by a fresh worker.

    Bound: each lease orphaned by a kill is taken over or recovered within
    TTL + S (+ slack) of the kill, because its holder's last heartbeat was
    before the kill and the sweeper runs every S.
    """
    tasks, workers, kills = 240, 8, 12
    rng = random.Random(7)
    store = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    fill(store, tasks)
    go = tmp_path / "go"
    opts = dict(ttl=TTL, work_min=0.03, work_max=0.25, deadline=90, go=go)

    def spawn(slot: int, n: int) -> Worker:
        return Worker("drain", db_url, f"w{slot}.{n}", tmp_path, seed=slot * 100 + n, face=face, **opts)

    pool = [spawn(i, 0) for i in range(workers)]
    start_together(pool, go)
    started = time.monotonic()  # drain times count from the start signal, not from process start-up
    finished: list[Worker] = []
    orphans: list[tuple[str, float]] = []  # (task id, database time of the kill)
    with Sweeper(db_url, SWEEP) as sweeper:
        wait_for_holders(store, {w.owner for w in pool}, need=workers // 2)
        working = time.monotonic()
        n = 0
        while n < kills:
            time.sleep(rng.uniform(0.1, 0.35))
            # Mid-lease: the victim is one that holds a lease right now.
            holders = leased_owners(store)
            slots = [i for i, w in enumerate(pool) if w.owner in holders]
            if not slots:
                continue
            n += 1
            slot = rng.choice(slots)
            victim = pool[slot]
            victim.kill()
            killed_at = store.now()
            held = [t.id for t in store.list_tasks(status="leased", limit=1000) if t.owner == victim.owner]
            orphans += [(tid, killed_at) for tid in held]
            finished.append(victim)
            pool[slot] = spawn(slot, n)
        last_fault = time.monotonic()
        results = wait_all(pool, timeout=90)
        drained = time.monotonic()
    report = assert_history_clean(store, db_url)

    errors = merged_errors(results)
    untyped = {k: v for k, v in errors.items() if k.startswith("untyped")}
    latencies = []
    for tid, killed_at in orphans:
        ends = [e for e in store.events(task_id=tid, limit=1000)
                if e["kind"] in ("taken_over", "recovered", "dead_lettered") and e["ts"] >= killed_at]
        assert ends, f"orphaned lease on {tid} never recovered"
        latencies.append(ends[0]["ts"] - killed_at)
    figures = Figures(
        "sigkill_storm", backend_of(db_url), tasks, workers, kills,
        lost=len(report.unfinished), violations=len(report.violations),
        drain_seconds=drained - started,
        extra={"start_s": round(working - started, 2), "kill_phase_s": round(last_fault - working, 2),
               "kills_mid_lease": len(orphans), "orphan_recovery_max_s": round(max(latencies, default=0), 2),
               "bound_s": TTL + SWEEP + SLACK, "drain_after_last_kill_s": round(drained - last_fault, 2),
               "sweeper_recovered": sweeper.recovered,
               "takeovers": sum(r.get("takeovers", 0) for r in results), "worker_errors": dict(errors)})
    figures.report()
    assert not untyped, untyped
    assert report.terminal == {"done": tasks, "dead": 0}
    assert len(orphans) >= 1, "no kill landed mid-lease"
    assert max(latencies) <= TTL + SWEEP + SLACK, latencies
    store.close()


def lock_conflicts(store: LeaseStore, task_id: str) -> list[dict[str, Any]]:
    sql = ("SELECT op, outcome, owner, fencing_token, detail FROM lock_events "
           "WHERE task_id = :id AND outcome = 'conflict' ORDER BY id")
    rows = store.database.query(sql, {"id": task_id})
    return [dict(zip(("op", "outcome", "owner", "fencing_token", "detail"), r)) for r in rows]


def test_faults_sigstop_past_ttl(db_url: str, face: str, tmp_path: Path) -> None:
    """Kleppmann's pause: A is stopped past its TTL, B takes over, A wakes and is fenced out.

    A's late heartbeat, checkpoint and release are each refused and recorded
    as a lock conflict; B's row is unchanged by them.
    """
    ttl = 0.5
    store = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    tid = store.enqueue("pause", {"job": 1}, task_id="paused-task").task_id
    started = time.monotonic()
    a = Worker("stale", db_url, "agent-a", tmp_path, queue="pause", ttl=ttl, face=face)
    try:
        assert a.readline() == {"claimed": tid, "fence": 1}
        a.readline()  # a heartbeat just committed: A is between transactions
        a.signal(signal.SIGSTOP)
        time.sleep(2 * ttl)
        b = store.claim_task("pause", "agent-b", ttl=30)
        assert b.lease is not None and b.lease.took_over and b.lease.fencing_token == 2
        store.heartbeat(b.lease, checkpoint={"by": "b"})
        before = store.get_task(tid)
        resumed_at = time.monotonic()
        a.signal(signal.SIGCONT)
        result = a.result(timeout=30)
        refused_after = time.monotonic() - resumed_at
    finally:
        a.kill()
    after = store.get_task(tid)
    conflicts = lock_conflicts(store, tid)
    store.release_task(b.lease, "done")
    report = assert_history_clean(store, db_url)
    Figures("sigstop_past_ttl", backend_of(db_url), tasks=1, workers=2, faults=1, lost=len(report.unfinished),
            violations=len(report.violations), drain_seconds=time.monotonic() - started,
            extra={"refusals": len(conflicts), "outcomes": result["outcomes"],
                   "resume_to_refusals_s": round(refused_after, 2), "ttl_s": ttl}).report()
    assert result["outcomes"] == {op: "StaleLeaseToken:taken_over" for op in ("heartbeat", "checkpoint", "release")}
    assert [(c["op"], c["owner"], c["fencing_token"]) for c in conflicts] == [
        ("heartbeat", "agent-b", 1), ("heartbeat", "agent-b", 1), ("release", "agent-b", 1)]
    assert after == before and after.owner == "agent-b" and after.checkpoint == {"by": "b"}
    assert compute_metrics(store, 60)["lockConflictEvents"].value == 3
    store.close()


@pytest.mark.slow
def test_faults_pg_backends_terminated(pg_url: str, face: str, tmp_path: Path) -> None:
    """The server cuts every worker connection (pg_terminate_backend) again and again under load."""
    tasks, workers, rounds = 200, 6, 8
    rng = random.Random(11)
    store = LeaseStore(pg_url, retry_policy=NO_BACKOFF)
    fill(store, tasks)
    with pg_role(pg_url, PG_DSN) as (role, url):
        go = tmp_path / "go"
        pool = [Worker("drain", url, f"w{i}", tmp_path, ttl=TTL, work_min=0.02, work_max=0.15, deadline=90, go=go,
                       face=face)
                for i in range(workers)]
        start_together(pool, go)
        started = time.monotonic()
        with Sweeper(pg_url, SWEEP):
            wait_for_holders(store, {w.owner for w in pool}, need=workers // 2)
            terminated = 0
            for _ in range(rounds):
                time.sleep(rng.uniform(0.15, 0.4))
                terminated += terminate_backends(PG_DSN, role)
            last_fault = time.monotonic()
            results = wait_all(pool, timeout=90)
            drained = time.monotonic()
    report = assert_history_clean(store, pg_url)
    errors = merged_errors(results)
    Figures("pg_backends_terminated", "postgresql", tasks, workers, faults=terminated,
            lost=len(report.unfinished), violations=len(report.violations), drain_seconds=drained - started,
            extra={"termination_rounds": rounds, "drain_after_last_fault_s": round(drained - last_fault, 2),
                   "worker_errors": dict(errors), "claims": sum(r.get("claims", 0) for r in results)}).report()
    assert terminated >= rounds
    assert set(errors) <= {"StoreUnavailable", "LeaseLost:released", "LeaseLost:expired",
                           "LeaseLost:taken_over", "LeaseLost:recovered"}, errors
    assert report.terminal == {"done": tasks, "dead": 0}
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["fair", "unfair"])
def test_faults_sqlite_busy_contention(sqlite_url: str, tmp_path: Path, gate: str) -> None:
    """8 processes claim and release 1000 tasks back to back with a 5 ms busy timeout.

    ``fair`` goes through the store's write gate, ``unfair`` through SQLite's
    own busy handler; either way a lost race is a typed, retryable StoreBusy.
    """
    tasks, workers = 1000, 8
    store = LeaseStore(sqlite_url, retry_policy=NO_BACKOFF)
    fill(store, tasks)
    go = tmp_path / "go"
    pool = [Worker("drain", sqlite_url, f"w{i}", tmp_path, ttl=5, work_min=0, work_max=0, busy_timeout=0.005,
                   unfair=gate == "unfair", deadline=90, go=go) for i in range(workers)]
    start_together(pool, go)
    started = time.monotonic()
    results = wait_all(pool, timeout=90)
    drained = time.monotonic()
    report = assert_history_clean(store, sqlite_url)
    errors = merged_errors(results)
    cycles = [r.get("done", 0) for r in results]
    Figures(f"sqlite_busy_{gate}", "sqlite", tasks, workers, faults=errors.get("StoreBusy", 0),
            lost=len(report.unfinished), violations=len(report.violations), drain_seconds=drained - started,
            extra={"busy_timeout_s": 0.005, "worker_errors": dict(errors), "done_per_worker": cycles}).report()
    assert set(errors) <= {"StoreBusy"}, errors
    assert errors["StoreBusy"] > 0, "no busy error was provoked"
    assert report.terminal == {"done": tasks, "dead": 0}
    store.close()


def _attempt(store: LeaseStore, name: str, op: Any, expected: type[Exception]) -> str:
    """Run one write during the fault: it must succeed whole or fail typed, changing nothing."""
    before = snapshot(store)
    try:
        op()
    except expected as exc:
        assert "\n" not in str(exc), str(exc)
        assert snapshot(store) == before, f"{name} half-wrote during the fault"
        return type(exc).__name__
    return "ok"


def _fault_ops(store: LeaseStore, lease: Any) -> dict[str, Any]:
    return {
        "enqueue": lambda: store.enqueue("chaos", {"blob": "x" * 200_000}),
        "enqueue_many": lambda: store.enqueue_many("chaos", [{"n": i, "pad": "p" * 2000} for i in range(100)]),
        "claim": lambda: store.claim_task("chaos", "b", ttl=60),
        "checkpoint": lambda: store.heartbeat(lease, checkpoint={"blob": "y" * 100_000}),
        "release": lambda: store.release_task(lease, "done"),
    }


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from leasestore.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs: a real filesystem that fills up (needs root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    require(mounted, "a tmpfs mount (run as root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill_disk(path: Path) -> int:
    written = 0
    # Unbuffered: nothing is left to flush (and fail) when the file closes.
    with path.open("wb", buffering=0) as fh:
        try:
            while True:
                written += fh.write(b"\0" * 65536) or 0
        except OSError:
            pass
    return written


def test_faults_sqlite_disk_full(tiny_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills up under the store: StoreFull, nothing half-written, work resumes once space is back."""
    path = str(tiny_disk / "store.db")
    store = LeaseStore(path, retry_policy=NO_BACKOFF)
    fill(store, 20)
    lease = store.claim_task("chaos", "a", ttl=60).lease
    started = time.monotonic()
    _fill_disk(tiny_disk / "filler")
    outcomes = {name: _attempt(store, name, op, StoreFull) for name, op in _fault_ops(store, lease).items()}
    before = snapshot(store)
    code, err = _cli(capsys, "enqueue", "chaos", "--payload", '{"blob": "%s"}' % ("z" * 200_000), "--db", path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: database is full") and "Traceback" not in err
    assert snapshot(store) == before
    (tiny_disk / "filler").unlink()
    lifted = time.monotonic()
    resumed = {name: _attempt(store, name, op, StoreUnavailable) for name, op in _fault_ops(store, lease).items()
               if outcomes[name] != "ok"}
    recovery = time.monotonic() - lifted
    assert sqlite_integrity(path) == "ok"
    report = check_history(store, require_drained=False)
    failures = sum(v != "ok" for v in outcomes.values()) + 1
    Figures("sqlite_disk_full", "sqlite", tasks=20, workers=1, faults=failures, lost=0,
            violations=len(report.violations), drain_seconds=time.monotonic() - started,
            extra={"during_fault": outcomes, "after_fault": resumed, "half_writes": 0,
                   "recovery_s": round(recovery, 3)}).report()
    assert report.ok, report.summary()
    assert failures >= 4 and outcomes["enqueue"] == outcomes["checkpoint"] == "StoreFull", outcomes
    assert set(resumed.values()) == {"ok"}, resumed
    store.close()


def test_faults_pg_read_only(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The server turns the workers' sessions read-only: StoreReadOnly, nothing written, resume after."""
    admin = LeaseStore(pg_url, retry_policy=NO_BACKOFF)
    fill(admin, 20)
    with pg_role(pg_url, PG_DSN) as (role, url), psycopg.connect(PG_DSN, autocommit=True) as conn:
        store = LeaseStore(url, init=False, retry_policy=NO_BACKOFF)
        lease = store.claim_task("chaos", "a", ttl=60).lease
        started = time.monotonic()
        conn.execute(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
        cut = terminate_backends(PG_DSN, role)  # new sessions pick the setting up
        outcomes = {name: _attempt(admin, name, op, StoreReadOnly) for name, op in _fault_ops(store, lease).items()}
        before = snapshot(admin)
        code, err = _cli(capsys, "enqueue", "chaos", "--db", url)
        assert code == 1 and err.count("\n") == 1 and err.startswith("error: database is read-only")
        assert snapshot(admin) == before
        conn.execute(f'ALTER ROLE "{role}" RESET default_transaction_read_only')
        cut += terminate_backends(PG_DSN, role)
        lifted = time.monotonic()
        resumed = {name: _attempt(admin, name, op, StoreUnavailable) for name, op in _fault_ops(store, lease).items()}
        recovery = time.monotonic() - lifted
        store.close()
    report = check_history(admin, require_drained=False)
    Figures("pg_read_only", "postgresql", tasks=20, workers=1, faults=len(outcomes) + 1, lost=0,
            violations=len(report.violations), drain_seconds=time.monotonic() - started,
            extra={"during_fault": outcomes, "after_fault": resumed, "backends_cut": cut, "half_writes": 0,
                   "recovery_s": round(recovery, 3)}).report()
    assert report.ok, report.summary()
    assert set(outcomes.values()) == {"StoreReadOnly"}, outcomes
    assert set(resumed.values()) == {"ok"}, resumed
    admin.close()


def test_faults_sqlite_read_only_file(capsys: pytest.CaptureFixture[str]) -> None:
    """An agent without write access to the file (uid nobody, file 0444) gets a one-line read-only error."""
    require(os.geteuid() == 0, "root, to run an agent as another user")
    folder = Path(tempfile.mkdtemp(prefix="leasestore-ro-"))
    try:
        folder.chmod(0o755)
        path = str(folder / "store.db")
        with LeaseStore(path) as store:
            fill(store, 3)
            before = snapshot(store)
        os.chmod(path, 0o444)
        exe = str(Path(sys.executable).with_name("leasestore"))
        nobody = [require_binary("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"]
        as_nobody: dict[str, Any] = dict(capture_output=True, text=True, timeout=60)
        refused = subprocess.run([*nobody, exe, "enqueue", "chaos", "--id", "new", "--db", path], **as_nobody)
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith("error: database is read-only") and refused.stderr.count("\n") == 1
        with LeaseStore(path, init=False) as store:
            assert snapshot(store) == before
        for name in os.listdir(folder):
            os.chmod(folder / name, 0o666)
        folder.chmod(0o777)
        resumed = subprocess.run([*nobody, exe, "enqueue", "chaos", "--id", "new", "--db", path], **as_nobody)
        assert resumed.returncode == 0, resumed
        assert sqlite_integrity(path) == "ok"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def test_faults_stopped_inside_a_write_transaction(db_url: str, face: str, tmp_path: Path) -> None:
    """A holder stops itself half-way through its claim (failpoint ``after_claim_update:stop``), then is killed.

    SQLite: other writers get a typed StoreBusy after their busy timeout while
    readers go on. PostgreSQL: claimers and the sweeper skip the locked row and
    are not held up. Either way the killed claim leaves nothing behind and
    writing resumes at once.
    """
    backend = backend_of(db_url)
    busy_timeout = 0.5
    store = LeaseStore(db_url, retry_policy=NO_BACKOFF, busy_timeout=busy_timeout)
    fill(store, 5)
    started = time.monotonic()
    a = Worker("stale", db_url, "agent-a", tmp_path, task_id="task-0000", failpoints="after_claim_update:stop",
               face=face)
    try:
        deadline = time.monotonic() + 30
        while not _stopped(a.pid):
            assert time.monotonic() < deadline and a.proc.exitcode is None, a._diagnostics()
            time.sleep(0.01)
        assert store.status_summary()["counts"]  # readers are never held up
        t0 = time.monotonic()
        outcomes = {}
        for name, op in (("claim", lambda: store.claim_task("chaos", "b", ttl=30)),
                         ("recover", store.recover_stale)):
            try:
                result = op()
                outcomes[name] = getattr(result, "status", "ok")
            except StoreUnavailable as exc:
                outcomes[name] = type(exc).__name__
        stalled_for = time.monotonic() - t0
        a.kill()
        t1 = time.monotonic()
        claimed = store.claim_task(task_id="task-0000", owner="c", ttl=30)
        resumed_in = time.monotonic() - t1
    finally:
        a.kill()
    assert claimed.lease is not None and claimed.lease.fencing_token == 1 and claimed.lease.attempt == 1
    events = store.events(task_id="task-0000")
    assert [e["kind"] for e in events] == ["enqueued", "claimed"] and events[-1]["owner"] == "c"
    store.release_task(claimed.lease, "done")
    report = check_history(store, require_drained=False)
    if backend == "sqlite":
        assert sqlite_integrity(db_url) == "ok"
    Figures("stopped_in_transaction", backend, tasks=5, workers=2, faults=1, lost=0,
            violations=len(report.violations), drain_seconds=time.monotonic() - started,
            extra={"during_stop": {k: str(v) for k, v in outcomes.items()},
                   "blocked_s": round(stalled_for, 2), "busy_timeout_s": busy_timeout,
                   "write_after_kill_s": round(resumed_in, 3)}).report()
    assert report.ok, report.summary()
    if backend == "sqlite":
        assert outcomes == {"claim": "StoreBusy", "recover": "StoreBusy"}
        assert stalled_for >= 2 * busy_timeout * 0.9
    else:
        # another task was claimed past the locked row; the sweeper skipped it
        assert outcomes == {"claim": ClaimStatus.ACQUIRED, "recover": "ok"}
        assert stalled_for < busy_timeout
    assert resumed_in < 5
    store.close()
