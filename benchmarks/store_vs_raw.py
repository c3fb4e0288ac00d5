"""Claim+release cycles/s through leasestore next to raw SQL sending the same statements.

Both sides run in the same invocation, on the same database server or disk,
and send the same statements per cycle (checked at start: one library cycle is
recorded statement by statement and compared with the raw side's list, and the
raw side sends its parameters with the per-cycle values filled in), so the
ratio is the library's own cost. The sides of a cell run at once, each in its
own processes on its own fresh database, and take turns in short bursts
(``--burst``), so drift on a shared machine hits them alike; IQR is the spread
of the burst-by-burst ratio.

* SQLite: ``BEGIN IMMEDIATE``, SELECT_NEXT_PENDING, ACQUIRE, INSERT_EVENT,
  INSERT_LOCK_EVENT, ``COMMIT``; then ``BEGIN IMMEDIATE``, RELEASE,
  INSERT_EVENT, INSERT_LOCK_EVENT, ``COMMIT`` (leasestore/db/queries.py), each
  transaction with the library's clock check (SELECT_CLOCK_HIGH_WATER after
  ``BEGIN``, SET_CLOCK_HIGH_WATER at most once a second) when it makes one. The
  raw side waits in sqlite3's own busy handler; the library also passes its
  fair write gate (``WriteGate``). ``--flock`` adds a raw column behind a
  blocking ``flock``, the floor for any process-fair gate.
* PostgreSQL: the one-statement CTEs CLAIM_NEXT and RELEASE
  (leasestore/db/postgresql.py), autocommitted, through psycopg.

The asyncio face (``AsyncLeaseStore``) is measured in the 1-process cell: one
process running ``--coroutines`` claimers (claim_task + release_task cycles)
on a pool of ``--pool-size`` connections (SQLite: the store's worker threads),
against the blocking library in one process, alternated in the same run.

    .venv/bin/python benchmarks/store_vs_raw.py --quick               # the targets, under ~3 minutes
    .venv/bin/python benchmarks/store_vs_raw.py                       # both backends, 1/2/4/8 processes
    .venv/bin/python benchmarks/store_vs_raw.py --backend sqlite --seconds 3 --workers 1,4 --flock
    .venv/bin/python benchmarks/store_vs_raw.py --latency             # claim latency at 1k / 100k / 1M pending
    .venv/bin/python benchmarks/store_vs_raw.py --latency --backend postgresql --sizes 1000,100000
    .venv/bin/python benchmarks/store_vs_raw.py --profile --backend sqlite --seconds 3
    .venv/bin/python benchmarks/store_vs_raw.py --backend postgresql --async-commit   # CPU-bound, not fsync-bound
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import importlib
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from leasestore import LeaseStore
from leasestore.aio import AsyncLeaseStore
from leasestore.db import engine as engine_module
from leasestore.db import postgresql as pg_sql
from leasestore.db import queries as q
from leasestore.db import sqlite as sqlite_driver
from leasestore.ops.common import new_token

PG_DSN = os.environ.get("LEASESTORE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
QUEUE = "bench"
TTL = 30.0
BUSY_TIMEOUT = 5.0  # the library's default busy timeout, on both sides
WARM_CYCLES = 20  # per sync worker before the start: connection open, statements prepared
Params = dict[str, Any]

# --- the statements of one cycle, as the library sends them ----------------------
# (label, statement, the parameters the raw side fills in per cycle). Every other
# parameter is sent as the library sent it in the check (see check_statements):
# the clock's offset, the queue, the TTL, the outcome, the audit rows'
# constants, whatever the library adds next.
Steps = list[tuple[str, str, set[str]]]
# SQLite's writers check their clock against the store's high-water mark
# (a read per write transaction; the mark is raised by a write at most once per
# CLOCK_HIGH_WATER_STEP): the raw side does the same when the library does.
SELECT_CLOCK_HIGH_WATER: str = getattr(q, "SELECT_CLOCK_HIGH_WATER", "-- no clock check")
SET_CLOCK_HIGH_WATER: str = getattr(q, "SET_CLOCK_HIGH_WATER", "-- no clock check")
CLOCK_HIGH_WATER_STEP: float = getattr(sqlite_driver, "CLOCK_HIGH_WATER_STEP", 1.0)
SQLITE_STEPS: Steps = [
    ("claim_begin", "BEGIN IMMEDIATE", set()),
    ("claim_clock", SELECT_CLOCK_HIGH_WATER, set()),
    ("next", q.SELECT_NEXT_PENDING, {"now"}),
    ("acquire", q.ACQUIRE, {"now", "id", "fence", "owner", "token_hash"}),
    ("claim_event", q.INSERT_EVENT, {"now", "id", "owner", "fence", "attempt"}),
    ("claim_lock", q.INSERT_LOCK_EVENT, {"now", "id", "owner", "fence"}),
    ("claim_commit", "COMMIT", set()),
    ("release_begin", "BEGIN IMMEDIATE", set()),
    ("release_clock", SELECT_CLOCK_HIGH_WATER, set()),
    ("release", q.RELEASE, {"now", "id", "token_hash", "fence"}),
    ("release_event", q.INSERT_EVENT, {"now", "id", "owner", "fence", "attempt"}),
    ("release_lock", q.INSERT_LOCK_EVENT, {"now", "id", "owner", "fence"}),
    ("release_commit", "COMMIT", set()),
]
PG_STEPS: Steps = [
    ("claim", pg_sql.CLAIM_NEXT, {"owner", "token_hash"}),
    ("release", pg_sql.RELEASE, {"id", "token_hash", "fence", "attempt"}),
]


@dataclass(frozen=True)
class Plan:
    """What the raw side sends: each step's parameters as the library sent them,
    and whether SQLite's clock check is on."""

    params: dict[str, Params]
    clock_check: bool = False


def _raw_hash(token: str) -> str:
    """The stored hash of a new token, computed as the library does, without its cache."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- raw SQLite: the library's statements through sqlite3 ------------------------
def _sqlite_connect(path: str) -> sqlite3.Connection:
    # The pragmas leasestore.db.sqlite.configure_connection sets.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def _no_gate() -> Iterator[None]:
    yield


class _BlockingFlock:
    """The floor of any process-fair gate: a blocking flock, no timeout."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path + ".rawlock", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def _raw_write_now(conn: sqlite3.Connection, clock_check: bool) -> float:
    now = time.time()
    if clock_check:
        row = conn.execute(SELECT_CLOCK_HIGH_WATER).fetchone()
        high = float(row[0]) if row is not None else None
        if high is None or now >= high + CLOCK_HIGH_WATER_STEP:
            conn.execute(SET_CLOCK_HIGH_WATER, {"now": repr(now)})
    return now


def _raw_sqlite_cycle(conn: sqlite3.Connection, gate: Callable[[], Any], owner: str, plan: Plan) -> bool:
    t = plan.params
    token_hash = _raw_hash(new_token())
    with gate():
        conn.execute("BEGIN IMMEDIATE")
        now = _raw_write_now(conn, plan.clock_check)
        pending = conn.execute(q.SELECT_NEXT_PENDING, {**t["next"], "now": now}).fetchone()
        if pending is None:
            conn.execute("COMMIT")
            return False
        task_id, fence = pending
        lease = conn.execute(q.ACQUIRE, {**t["acquire"], "now": now, "id": task_id, "fence": fence, "owner": owner,
                                         "token_hash": token_hash}).fetchone()
        fence, attempt = lease[3], lease[5]
        conn.execute(q.INSERT_EVENT, {**t["claim_event"], "now": now, "id": task_id, "owner": owner, "fence": fence,
                                      "attempt": attempt})
        conn.execute(q.INSERT_LOCK_EVENT, {**t["claim_lock"], "now": now, "id": task_id, "owner": owner,
                                           "fence": fence})
        conn.execute("COMMIT")
    with gate():
        conn.execute("BEGIN IMMEDIATE")
        now = _raw_write_now(conn, plan.clock_check)
        row = conn.execute(q.RELEASE, {**t["release"], "now": now, "id": task_id, "token_hash": token_hash,
                                       "fence": fence}).fetchone()
        conn.execute(q.INSERT_EVENT, {**t["release_event"], "now": now, "id": task_id, "owner": row[1],
                                      "fence": fence, "attempt": attempt})
        conn.execute(q.INSERT_LOCK_EVENT, {**t["release_lock"], "now": now, "id": task_id, "owner": row[1],
                                           "fence": fence})
        conn.execute("COMMIT")
    return True


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def raw_sqlite_worker(url: str, owner: str, plan: Plan, flock: bool = False) -> Worker:
    conn = _sqlite_connect(_sqlite_path(url))
    gate = _BlockingFlock(_sqlite_path(url)) if flock else _no_gate
    return Worker(lambda: _raw_sqlite_cycle(conn, gate, owner, plan), conn.close)


# --- raw PostgreSQL: the library's one-statement CTEs through psycopg ---------------
def raw_pg_worker(url: str, owner: str, plan: Plan) -> Worker:
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)
    cur = conn.cursor()
    claim, release = plan.params["claim"], plan.params["release"]

    def cycle() -> bool:
        token_hash = _raw_hash(new_token())
        row = cur.execute(pg_sql.CLAIM_NEXT, {**claim, "owner": owner, "token_hash": token_hash}).fetchone()
        if row is None:
            return False
        task_id, fence, attempt = row[1], row[4], row[6]
        cur.execute(pg_sql.RELEASE, {**release, "id": task_id, "token_hash": token_hash, "fence": fence,
                                     "attempt": attempt}).fetchone()
        return True

    return Worker(cycle, conn.close)


# --- the library -----------------------------------------------------------------------
def _fair() -> bool:
    return os.environ.get("LEASESTORE_BENCH_FAIR", "1") == "1"


def library_worker(url: str, owner: str) -> Worker:
    store = LeaseStore(url, init=False, fair_writes=_fair())

    def cycle() -> bool:
        lease = store.claim_task(QUEUE, owner, ttl=TTL, additional=True).lease
        if lease is None:
            return False
        store.release_task(lease, "done")
        return True

    return Worker(cycle, store.close)


@dataclass
class Worker:
    cycle: Callable[[], bool]  # one claim+release; False when the queue ran dry
    close: Callable[[], None]


Burst = tuple[list[int], bool]  # cycles per worker (process or coroutine), ran dry


def burst_sync(worker: Worker, seconds: float) -> Burst:
    cycles = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if not worker.cycle():
            return [cycles], True
        cycles += 1
    return [cycles], False


class AsyncWorker:
    """``coroutines`` claimers on one AsyncLeaseStore, run burst by burst on one event loop."""

    def __init__(self, url: str, owner: str, coroutines: int, pool_size: int) -> None:
        self.store = AsyncLeaseStore(url, init=False, fair_writes=_fair(), pool_size=pool_size)
        self.owners = [f"{owner}-c{i}" for i in range(coroutines)]

    async def _claimer(self, owner: str, until: float) -> tuple[int, bool]:
        cycles = 0
        while time.monotonic() < until:
            lease = (await self.store.claim_task(QUEUE, owner, ttl=TTL, additional=True)).lease
            if lease is None:
                return cycles, True
            await self.store.release_task(lease, "done")
            cycles += 1
        return cycles, False

    async def burst(self, seconds: float) -> Burst:
        until = time.monotonic() + seconds
        done = await asyncio.gather(*(self._claimer(owner, until) for owner in self.owners))
        return [n for n, _ in done], any(dry for _, dry in done)


@dataclass(frozen=True)
class Job:
    kind: str  # library | async | raw-sqlite | raw-sqlite-flock | raw-pg
    coroutines: int = 32
    pool_size: int = 20
    warm: float = 1.0  # seconds of cycles before the first burst (async: grows the pool)
    setup: str = ""  # "module:function" the worker process calls first (e.g. benchmarks/write_gate.py)


def _serve(job: Job, url: str, owner: str, plan: Plan, pipe: Any) -> None:
    """One worker process: warm up, say ready, then run each burst the parent asks for.

    Workers of every kind stay up for the whole cell and take turns in short
    bursts, so drift on a shared machine hits every side alike."""
    if job.setup:
        module, function = job.setup.split(":")
        getattr(importlib.import_module(module), function)()
    if job.kind == "async":
        with asyncio.Runner() as runner:
            aworker = AsyncWorker(url, owner, job.coroutines, job.pool_size)
            runner.run(aworker.burst(job.warm))
            pipe.send("ready")
            while (seconds := pipe.recv()) is not None:
                pipe.send(runner.run(aworker.burst(seconds)))
            runner.run(aworker.store.close())
        return
    if job.kind == "library":
        worker = library_worker(url, owner)
    elif job.kind == "raw-pg":
        worker = raw_pg_worker(url, owner, plan)
    else:
        worker = raw_sqlite_worker(url, owner, plan, flock=job.kind == "raw-sqlite-flock")
    for _ in range(WARM_CYCLES):  # connection open, statements prepared
        worker.cycle()
    pipe.send("ready")
    while (seconds := pipe.recv()) is not None:
        pipe.send(burst_sync(worker, seconds))
    worker.close()


class Side:
    """The processes of one kind in one cell, on their own database."""

    def __init__(self, job: Job, url: str, processes: int, plan: Plan) -> None:
        ctx = mp.get_context("spawn")
        self.job = job
        self.pipes = []
        self.procs = []
        for i in range(processes):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(job, url, f"w{i}", plan, theirs), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        self.counts: list[int] = []  # per worker, all bursts
        self.dry = False
        self.seconds = 0.0
        self.burst_rates: list[float] = []

    def wait_ready(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs):
            if not pipe.poll(300) or pipe.recv() != "ready":
                raise SystemExit(f"{self.job.kind} worker {proc.pid} did not start")

    def burst(self, seconds: float) -> None:
        for pipe in self.pipes:
            pipe.send(seconds)
        counts: list[int] = []  # per worker, this burst
        for pipe in self.pipes:
            if not pipe.poll(seconds + 120):
                raise SystemExit(f"{self.job.kind} worker did not finish its burst")
            got, dry = pipe.recv()
            counts.extend(got)
            self.dry |= dry
        self.counts = [a + b for a, b in zip(self.counts, counts)] if self.counts else counts
        self.seconds += seconds
        self.burst_rates.append(sum(counts) / seconds)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()

    @property
    def rate(self) -> float:
        return sum(self.counts) / self.seconds if self.seconds else 0.0

    @property
    def fair(self) -> float:
        """Slowest worker's cycles over the fastest's."""
        fastest = max(self.counts, default=0)
        return min(self.counts) / fastest if fastest else 0.0


def measure_cell(jobs: list[Job], urls: list[str], processes: int, seconds: float, burst: float,
                 plan: Plan) -> list[Side]:
    """Every job's processes up at once, then bursts taking turns (rotating who goes first)."""
    sides = [Side(job, url, processes, plan) for job, url in zip(jobs, urls)]
    try:
        for side in sides:
            side.wait_ready()
        rounds = max(1, round(seconds / burst))
        for i in range(rounds):
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                side.burst(burst)
    finally:
        for side in sides:
            side.close()
    return sides


# --- the statements check ------------------------------------------------------------------
Sent = list[tuple[str, Params]]


def _tap(step: Any, sent: Sent) -> Any:
    """``step`` unchanged, each statement (text and parameters) recorded on the way."""
    try:
        stmt = next(step)
    except StopIteration as stop:
        return stop.value
    while True:
        sent.append((stmt.sql, dict(stmt.params)))
        try:
            result = yield stmt
        except BaseException as exc:  # noqa: BLE001 - thrown in by the runner, passed on
            try:
                stmt = step.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            stmt = step.send(result)
        except StopIteration as stop:
            return stop.value


@contextmanager
def recording_statements() -> Iterator[Sent]:
    """Every statement the library sends (blocking face) while the block runs, in order."""
    sent: Sent = []
    original = engine_module.drive

    def recording(run: Any, conn: Any) -> Any:
        run.step = _tap(run.step, sent)
        return original(run, conn)

    engine_module.drive = recording
    try:
        yield sent
    finally:
        engine_module.drive = original


def statement_names(texts: list[str]) -> list[str]:
    names = {s.strip(): n for n, s in vars(q).items() if isinstance(s, str)}
    names.update({s.strip(): f"postgresql.{n}" for n, s in vars(pg_sql).items() if isinstance(s, str)})
    return [names.get(s.strip(), s.strip()[:40]) for s in texts]


def plan_for(what: str, sent: Sent, steps: Steps) -> Plan:
    """The raw side's plan from the library's statements, after checking that the
    raw side sends the library's statements and fills in parameters they have.

    SET_CLOCK_HIGH_WATER is left out of the comparison: both sides send it when
    the store's time mark is a step behind, at most once a second."""
    sent = [(sql, params) for sql, params in sent if sql.strip() != SET_CLOCK_HIGH_WATER.strip()]
    texts = [sql.strip() for sql, _ in sent]
    clock_check = SELECT_CLOCK_HIGH_WATER.strip() in texts
    steps = [step for step in steps if clock_check or step[1] != SELECT_CLOCK_HIGH_WATER]
    if texts != [sql.strip() for _, sql, _ in steps]:
        raise SystemExit(f"{what}: the library sends {statement_names(texts)}, the raw side "
                         f"{statement_names([sql for _, sql, _ in steps])}: update the raw side")
    for (sql, params), (_label, _, fills) in zip(sent, steps):
        if not fills <= params.keys():
            raise SystemExit(f"{what}: the library's {statement_names([sql])[0]} takes {sorted(params)}, the raw "
                             f"side fills in {sorted(fills)}: update the raw side")
    return Plan({label: params for (_, params), (label, _, _) in zip(sent, steps)}, clock_check)


def check_statements(backend: str, url: str) -> Plan:
    """Record one library claim+release cycle: the raw side's plan."""
    store = LeaseStore(url, init=False, fair_writes=_fair())
    try:
        with recording_statements() as sent:
            lease = store.claim_task(QUEUE, "check", ttl=TTL, additional=True).lease
            assert lease is not None
            store.release_task(lease, "done")
    finally:
        store.close()
    plan = plan_for(f"{backend} claim+release", sent, SQLITE_STEPS if backend == "sqlite" else PG_STEPS)
    print(f"# {backend}: the raw side sends the library's {len(plan.params)} statements per cycle with its "
          f"parameters{' (and its clock check)' if plan.clock_check else ''} (checked)", flush=True)
    return plan


# --- seeding ---------------------------------------------------------------------------------
def seed(url: str, tasks: int) -> None:
    """A fresh store with ``tasks`` pending rows (bulk-loaded, not part of the measurement)."""
    store = LeaseStore(url)
    now = time.time()
    rows = [(uuid.uuid4().hex, QUEUE, now - 1, now) for _ in range(tasks)]
    sql = ("INSERT INTO tasks (id, queue, status, attempts, max_attempts, fencing_token, available_at, "
           "created_at, updated_at) VALUES ({p}, {p}, 'pending', 0, 3, 0, {p}, {p}, {p2})")
    if store.backend == "sqlite":
        lite = sqlite3.connect(_sqlite_path(url))
        lite.executemany(sql.format(p="?", p2="?4"), rows)
        lite.commit()
        lite.execute("ANALYZE")
        lite.close()
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


class Target:
    """A fresh database per measurement: a SQLite file or a PostgreSQL schema."""

    # Extra libpq options for PostgreSQL sessions, e.g. synchronous_commit=off
    # (--async-commit) so a disk shared with other work stops deciding the figure.
    pg_options = ""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend, self.root = backend, root
        self.schemas: list[str] = []  # only ours are dropped: another run may share the server

    def fresh(self) -> str:
        name = "b_" + uuid.uuid4().hex[:10]
        if self.backend == "sqlite":
            return f"sqlite:///{self.root / name}.db"
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        self.schemas.append(name)
        return (PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
                + f"?options=-csearch_path%3D{name}{self.pg_options}")

    def drop_all(self) -> None:
        if self.backend == "postgresql":
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                while self.schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {self.schemas.pop()} CASCADE")
        else:
            for path in self.root.glob("b_*"):
                path.unlink(missing_ok=True)


# --- the table -----------------------------------------------------------------------------
# Targets: library ÷ raw (and async ÷ sync) at least this much, slowest ÷ fastest worker too.
RATIO_TARGETS = {("sqlite", 1): 0.80, ("sqlite", 4): 0.70,
                 ("postgresql", 1): 0.85, ("postgresql", 4): 0.85, ("postgresql", 8): 0.85}
ASYNC_TARGETS = {"postgresql": 1.5}
FAIR_TARGETS = {("sqlite", 4): 0.5}


def spread(a: Side, b: Side) -> str:
    """Quartiles of the burst-by-burst ratio a/b (bursts of one round ran back to back)."""
    pairs = [x / y for x, y in zip(a.burst_rates, b.burst_rates) if y]
    if len(pairs) < 4:
        return ""
    quartiles = statistics.quantiles(pairs, n=4)
    return f"{quartiles[0]:.2f}-{quartiles[2]:.2f}"


def verdict(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return "ok" if value >= target else "SHORT"


def throughput(backends: list[str], seconds: float, burst: float, workers: dict[str, list[int]], *,
               flock: bool, async_job: Job | None, seeds: dict[str, int]) -> None:
    header = (f"{'backend':<11}{'face':<8}{'procs':>6}{'lib/s':>9}{'raw/s':>9}{'ratio':>7}{'IQR':>11}{'target':>8}"
              f"{'fair lib':>9}{'fair raw':>9}{'':>3}")
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            target = Target(backend, Path(tmp))
            try:
                url = target.fresh()
                seed(url, 10)
                plan = check_statements(backend, url)
                target.drop_all()
                print(header + (f"{'flock/s':>9}{'lib/flock':>10}{'fair flk':>9}" if flock and backend == "sqlite"
                                else ""), flush=True)
                raw_kind = "raw-sqlite" if backend == "sqlite" else "raw-pg"
                for procs in workers[backend]:
                    jobs = [Job("library"), Job(raw_kind)]
                    if flock and backend == "sqlite":
                        jobs.append(Job("raw-sqlite-flock"))
                    if procs == 1 and async_job is not None:
                        jobs.append(async_job)
                    urls = []
                    for _ in jobs:
                        urls.append(target.fresh())
                        seed(urls[-1], seeds[backend])
                    sides = {side.job.kind: side for side in measure_cell(jobs, urls, procs, seconds, burst,
                                                                                  plan)}
                    target.drop_all()
                    lib, raw = sides["library"], sides[raw_kind]
                    ratio = lib.rate / raw.rate if raw.rate else float("nan")
                    goal = RATIO_TARGETS.get((backend, procs))
                    fair_goal = FAIR_TARGETS.get((backend, procs))
                    dry = "!" if lib.dry or raw.dry else ""
                    line = (f"{backend:<11}{'sync':<8}{procs:>6}{lib.rate:>9.0f}{raw.rate:>9.0f}{ratio:>7.2f}"
                            f"{spread(lib, raw):>11}{(f'>={goal:.2f}' if goal else ''):>8}{lib.fair:>9.2f}"
                            f"{raw.fair:>9.2f}{dry:>3}")
                    if "raw-sqlite-flock" in sides:
                        floor = sides["raw-sqlite-flock"]
                        line += f"{floor.rate:>9.0f}{lib.rate / floor.rate:>10.2f}{floor.fair:>9.2f}"
                    print(line, flush=True)
                    summary.append(f"{backend} sync {procs} proc: library/raw {ratio:.2f} "
                                   f"{verdict(ratio, goal)}".rstrip())
                    if fair_goal is not None:
                        summary.append(f"{backend} sync {procs} proc: slowest/fastest library worker "
                                       f"{lib.fair:.2f} {verdict(lib.fair, fair_goal)}")
                    if "async" in sides:
                        aside = sides["async"]
                        ratio = aside.rate / lib.rate if lib.rate else float("nan")
                        goal = ASYNC_TARGETS.get(backend)
                        dry = "!" if aside.dry else ""
                        face = f"async{aside.job.coroutines}"
                        print(f"{backend:<11}{face:<8}{1:>6}{aside.rate:>9.0f}{lib.rate:>9.0f}{ratio:>7.2f}"
                              f"{spread(aside, lib):>11}{(f'>={goal:.2f}' if goal else ''):>8}{aside.fair:>9.2f}"
                              f"{lib.fair:>9.2f}{dry:>3}"
                              f"   (vs the sync library, 1 process)", flush=True)
                        summary.append(f"{backend} async ({aside.job.coroutines} coroutines, pool "
                                       f"{aside.job.pool_size}, 1 proc) / sync 1 proc: {ratio:.2f} "
                                       f"{verdict(ratio, goal)}".rstrip())
            finally:
                target.drop_all()
    print("\n# same-run ratios")
    for line in summary:
        print("#  " + line)
    print("# ratio: total cycles over the same measured time; IQR: quartiles of the ratio burst by burst "
          "(its width is the machine's noise)")
    print("# '!' after a row: a worker emptied the queue before the end (raise --tasks)")


# --- latency and profile ---------------------------------------------------------------------
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
            store.claim_task(QUEUE, "lat", ttl=TTL, additional=True)
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
            worker = library_worker(url, "profiled")
            for _ in range(WARM_CYCLES):
                worker.cycle()
            profiler = cProfile.Profile()
            profiler.enable()
            counts, _dry = burst_sync(worker, seconds)
            profiler.disable()
            worker.close()
        finally:
            target.drop_all()
    print(f"{backend}: {counts[0] / seconds:.0f} cycles/s under the profiler")
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
    parser.add_argument("--quick", action="store_true",
                        help="only the cells with targets (SQLite 1,4; PostgreSQL 1,4,8; async) and 5 s per "
                             "side: under 3 minutes")
    parser.add_argument("--seconds", type=float, default=None,
                        help="measured seconds per side and cell (default 10; --quick 5)")
    parser.add_argument("--burst", type=float, default=0.25,
                        help="the sides of a cell take turns in bursts this long (default 0.25 s)")
    parser.add_argument("--workers", type=_int_list, default=None,
                        help="comma-separated process counts (default 1,2,4,8; --quick 1,4 SQLite, 1,4,8 PostgreSQL)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="pending tasks seeded per side and cell (default 10000 + 12000/s SQLite, "
                             "10000 + 6000/s PostgreSQL)")
    parser.add_argument("--flock", action="store_true",
                        help="SQLite: also run the raw cycle behind a blocking flock (a fair gate's floor)")
    parser.add_argument("--no-async", action="store_true", help="skip the asyncio face")
    parser.add_argument("--coroutines", type=int, default=32, help="claimers of the async process (default 32)")
    parser.add_argument("--pool-size", type=int, default=20, help="AsyncLeaseStore pool_size (default 20)")
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
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 10.0)
    if args.profile:
        for backend in backends:
            profile(backend, seconds)
        return 0
    if args.latency:
        latency(backends, args.sizes)
        return 0
    async_job = None if args.no_async else Job("async", args.coroutines, args.pool_size,
                                                warm=0.5 if args.quick else 1.0)
    # Enough for the fastest side at the peak rates seen on a small machine, twice over.
    seeds = ({"sqlite": int(10_000 + 12_000 * seconds), "postgresql": int(10_000 + 6_000 * seconds)}
             if args.tasks is None else dict.fromkeys(backends, args.tasks))
    started = time.monotonic()
    if args.workers:
        workers = dict.fromkeys(backends, args.workers)
    elif args.quick:
        workers = {"sqlite": [1, 4], "postgresql": [1, 4, 8]}
    else:
        workers = dict.fromkeys(backends, [1, 2, 4, 8])
    throughput(backends, seconds, args.burst, workers, flock=args.flock, async_job=async_job, seeds=seeds)
    print(f"# {time.monotonic() - started:.0f} s in all; {seconds:g} s measured per side and cell in "
          f"{args.burst:g} s turns; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
