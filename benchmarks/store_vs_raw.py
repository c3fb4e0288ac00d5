"""Claim+release cycles/s through leasestore next to the same cycle in raw SQL.

Both sides run in the same invocation, on the same database server or disk,
and write the same rows per cycle (the task UPDATE, one event_log row and one
lock_events row per transaction), so the ratio is the library's own cost.
The raw SQLite side uses the plain sqlite3 busy handler; the raw PostgreSQL
side uses the same one-statement CTEs the library sends.

    .venv/bin/python benchmarks/store_vs_raw.py                  # both backends, 1/2/4/8 processes
    .venv/bin/python benchmarks/store_vs_raw.py --backend sqlite --seconds 3 --workers 1,4
    .venv/bin/python benchmarks/store_vs_raw.py --latency        # claim latency at 1k / 100k / 1M pending
    .venv/bin/python benchmarks/store_vs_raw.py --latency --backend postgresql --sizes 1000,100000
    .venv/bin/python benchmarks/store_vs_raw.py --profile --backend sqlite --seconds 3
    .venv/bin/python benchmarks/store_vs_raw.py --backend postgresql --async-commit   # CPU-bound, not fsync-bound
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from leasestore import LeaseStore
from leasestore.db import postgresql as pg_sql

PG_DSN = os.environ.get("LEASESTORE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
QUEUE = "bench"

# --- raw SQLite cycle: the statements the library runs, without the library ----
RAW_SQLITE_CLAIM = """
UPDATE tasks SET status = 'leased', owner = ?, lease_token_hash = ?, fencing_token = fencing_token + 1,
       attempts = attempts + 1, lease_expires_at = ? + 30, leased_at = ?, updated_at = ?
WHERE id = (SELECT id FROM tasks WHERE queue = ? AND status = 'pending' AND available_at <= ?
            ORDER BY available_at, created_at LIMIT 1)
RETURNING id, fencing_token, attempts
"""
RAW_SQLITE_RELEASE = """
UPDATE tasks SET status = 'done', lease_token_hash = NULL, lease_expires_at = NULL,
       available_at = ?, updated_at = ?
WHERE id = ? AND lease_token_hash = ? AND fencing_token = ? AND status = 'leased' AND lease_expires_at > ?
"""
RAW_EVENT = """INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, fencing_token, attempt)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
RAW_LOCK = """INSERT INTO lock_events (ts, task_id, queue, owner, op, outcome, fencing_token)
VALUES (?, ?, ?, ?, ?, ?, ?)"""


def raw_sqlite_worker(path: str, owner: str, until: float) -> int:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    cycles = 0
    while time.time() < until:
        token_hash = hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(RAW_SQLITE_CLAIM, (owner, token_hash, now, now, now, QUEUE, now)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            break
        task_id, fence, attempt = row
        conn.execute(RAW_EVENT, (now, task_id, QUEUE, "claimed", "pending", "leased", owner, fence, attempt))
        conn.execute(RAW_LOCK, (now, task_id, QUEUE, owner, "claim", "acquired", fence))
        conn.execute("COMMIT")
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(RAW_SQLITE_RELEASE, (now, now, task_id, token_hash, fence, now))
        conn.execute(RAW_EVENT, (now, task_id, QUEUE, "released", "leased", "done", owner, fence, attempt))
        conn.execute(RAW_LOCK, (now, task_id, QUEUE, owner, "release", "released", fence))
        conn.execute("COMMIT")
        cycles += 1
    conn.close()
    return cycles


def raw_pg_worker(url: str, owner: str, until: float) -> int:
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    conn = psycopg.connect(dsn, autocommit=True)
    cycles = 0
    while time.time() < until:
        token_hash = hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest()
        row = conn.execute(pg_sql.CLAIM_NEXT, {"offset": 0.0, "resume": False, "owner": owner, "queue": QUEUE,
                                               "token_hash": token_hash, "ttl": 30.0}).fetchone()
        if row is None:
            break
        task_id, fence, attempt = row[1], row[4], row[6]
        conn.execute(pg_sql.RELEASE, {"offset": 0.0, "to_status": "done", "delay": 0.0, "error": None,
                                      "id": task_id, "token_hash": token_hash, "fence": fence,
                                      "kind": "released", "attempt": attempt, "reason": None}).fetchone()
        cycles += 1
    conn.close()
    return cycles


def library_worker(url: str, owner: str, until: float) -> int:
    store = LeaseStore(url, init=False, fair_writes=os.environ.get("LEASESTORE_BENCH_FAIR", "1") == "1")
    cycles = 0
    while time.time() < until:
        lease = store.claim_task(QUEUE, owner, ttl=30, additional=True).lease
        if lease is None:
            break
        store.release_task(lease, "done")
        cycles += 1
    store.close()
    return cycles


def _run_worker(kind: str, url: str, owner: str, seconds: float, ready: mp.Queue, go: Any,
                results: mp.Queue) -> None:
    target = {"library": library_worker, "raw-sqlite": raw_sqlite_worker, "raw-pg": raw_pg_worker}[kind]
    # Start together only once every process has imported everything: on a
    # loaded machine spawning 8 interpreters can take longer than the run.
    ready.put(owner)
    go.wait()
    results.put(target(url, owner, time.time() + seconds))


def seed(url: str, tasks: int) -> None:
    """A fresh store with ``tasks`` pending rows (bulk-loaded, not part of the measurement)."""
    store = LeaseStore(url)
    now = time.time()
    rows = [(uuid.uuid4().hex, QUEUE, now - 1, now) for _ in range(tasks)]
    sql = ("INSERT INTO tasks (id, queue, status, attempts, max_attempts, fencing_token, available_at, "
           "created_at, updated_at) VALUES ({p}, {p}, 'pending', 0, 3, 0, {p}, {p}, {p2})")
    if store.backend == "sqlite":
        conn = sqlite3.connect(store.url.database)
        conn.executemany(sql.format(p="?", p2="?4"), rows)
        conn.commit()
        conn.execute("ANALYZE")
        conn.close()
    else:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)  # keeps libpq options verbatim
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            # COPY: a million rows load in seconds, not minutes.
            with cur.copy("COPY tasks (id, queue, status, attempts, max_attempts, fencing_token, "
                          "available_at, created_at, updated_at) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row((r[0], r[1], "pending", 0, 3, 0, r[2], r[3], r[3]))
            conn.commit()
            cur.execute("ANALYZE tasks")
            conn.commit()
            # Write the bulk load out now: otherwise the checkpoint it triggers
            # runs during the measurement and every commit waits on a busy disk
            # (claims at 1M pending measured 4 ms instead of 0.6 ms).
            try:
                cur.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                conn.rollback()
    store.close()


def measure(kind: str, url: str, processes: int, seconds: float) -> tuple[float, float]:
    """(cycles/s, slowest/fastest worker ratio)."""
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()
    results: mp.Queue = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=_run_worker, args=(kind, url, f"w{i}", seconds, ready, go, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    go.set()
    counts = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    return sum(counts) / seconds, (min(counts) / max(counts) if max(counts) else 0.0)


class Target:
    """A fresh database per measurement: a SQLite file or a PostgreSQL schema."""

    # Extra libpq options for PostgreSQL sessions, e.g. synchronous_commit=off
    # (--async-commit) so a disk shared with other work stops deciding the figure.
    pg_options = ""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend, self.root = backend, root

    def fresh(self) -> str:
        name = "b_" + uuid.uuid4().hex[:10]
        if self.backend == "sqlite":
            return str(self.root / f"{name}.db")
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1) + f"?options=-csearch_path%3D{name}{self.pg_options}"

    def drop_all(self) -> None:
        if self.backend == "postgresql":
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'b\\_%'").fetchall():
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")


def throughput(backends: list[str], seconds: float, repeats: int, workers: list[int]) -> None:
    print(f"{'backend':<11}{'procs':>6}{'library/s':>11}{'raw/s':>9}{'ratio':>7}{'fair lib':>9}{'fair raw':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            target = Target(backend, Path(tmp))
            raw_kind = "raw-sqlite" if backend == "sqlite" else "raw-pg"
            for procs in workers:
                lib_runs, raw_runs = [], []
                for _ in range(repeats):  # alternate so drift hits both sides alike
                    for kind, runs in (("library", lib_runs), (raw_kind, raw_runs)):
                        url = target.fresh()
                        seed(url, 60_000 if backend == "sqlite" else 40_000)
                        runs.append(measure(kind, url, procs, seconds))
                lib = statistics.median(r[0] for r in lib_runs)
                raw = statistics.median(r[0] for r in raw_runs)
                lib_fair = min(r[1] for r in lib_runs)
                raw_fair = min(r[1] for r in raw_runs)
                ratio = lib / raw if raw else float("nan")
                print(f"{backend:<11}{procs:>6}{lib:>11.0f}{raw:>9.0f}{ratio:>7.2f}{lib_fair:>9.2f}{raw_fair:>9.2f}",
                      flush=True)
            target.drop_all()


def latency(backends: list[str], sizes: list[int], claims: int = 300) -> None:
    print(f"{'backend':<11}{'pending':>10}{'claim p50 ms':>14}{'claim p95 ms':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            target = Target(backend, Path(tmp))
            try:
                _latency_rows(backend, target, sizes, claims)
            finally:
                target.drop_all()


def _latency_rows(backend: str, target: Target, sizes: list[int], claims: int) -> None:
    base = None
    for size in sizes:
        url = target.fresh()
        seed(url, size)
        store = LeaseStore(url, init=False)
        samples = []
        for i in range(claims):
            t0 = time.perf_counter()
            store.claim_task(QUEUE, "lat", ttl=30, additional=True)
            samples.append((time.perf_counter() - t0) * 1000)
        store.close()
        p50 = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[18]
        base = base or p50
        print(f"{backend:<11}{size:>10}{p50:>14.3f}{p95:>14.3f}   x{p50 / base:.2f} of the smallest",
              flush=True)


def profile(backend: str, seconds: float, top: int = 25) -> None:
    """One library worker in this process under cProfile: where a cycle's time goes."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        target = Target(backend, Path(tmp))
        try:
            url = target.fresh()
            seed(url, 60_000)
            profiler = cProfile.Profile()
            profiler.enable()
            cycles = library_worker(url, "profiled", time.time() + seconds)
            profiler.disable()
        finally:
            target.drop_all()
    print(f"{backend}: {cycles / seconds:.0f} cycles/s under the profiler")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median is printed")
    parser.add_argument("--workers", type=_int_list, default=[1, 2, 4, 8],
                        help="comma-separated process counts (default 1,2,4,8)")
    parser.add_argument("--latency", action="store_true", help="claim latency by number of pending tasks")
    parser.add_argument("--sizes", type=_int_list, default=[1_000, 100_000, 1_000_000],
                        help="pending tasks for --latency (default 1000,100000,1000000)")
    parser.add_argument("--profile", action="store_true", help="cProfile one library worker instead")
    parser.add_argument("--async-commit", action="store_true",
                        help="PostgreSQL sessions of both sides with synchronous_commit=off (commits stop waiting on fsync)")
    args = parser.parse_args()
    if args.async_commit:
        Target.pg_options = "%20-csynchronous_commit%3Doff"
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if args.profile:
        for backend in backends:
            profile(backend, args.seconds)
        return 0
    if args.latency:
        latency(backends, args.sizes)
        return 0
    throughput(backends, args.seconds, args.repeats, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
