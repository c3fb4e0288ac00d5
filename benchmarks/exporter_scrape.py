"""Exporter scrape time as the audit log grows, next to the raw SQL it stands on.

Two cases, each next to the raw SQL a scrape would otherwise run (the windowed
``GROUP BY`` statements of ``leasestore metrics``, the dead-letter count, the
lease and backlog reads) through the bare driver (sqlite3 / psycopg), measured
in the same run:

History: the store is seeded as if it had run at a steady 10,000 state changes
an hour for N / 10,000 hours: the metrics window (60 minutes) always holds
about the same number of rows, and the log behind it grows from 10,000 to
1,000,000. "Flat" means the scrape at 1,000,000 rows costs about what it costs
at 10,000.

Busy: N events and N lock rows inside the 60-minute window (1,000,000 is about
280 events a second), written by SQL (``generate_series`` / a recursive CTE)
and topped up to "now" just before the scrapes, beside a backlog of 20,000
tasks and 1,000 dead letters (100 open). The raw windowed statements grow with
N; the scrape should not (it reads the rows added since the previous scrape).
"live" is a scrape after another 15 seconds of that traffic (a Prometheus
scrape interval) was written: what a scrape of a live store costs.

For each size it reports the first scrape (which totals the audit log once;
the exporter does it at start) and the median of the following scrapes.

    .venv/bin/python benchmarks/exporter_scrape.py                         # SQLite and PostgreSQL
    .venv/bin/python benchmarks/exporter_scrape.py --backend sqlite --sizes 10000,1000000 --busy ""
    .venv/bin/python benchmarks/exporter_scrape.py --sizes "" --busy 1000000,10000000
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from exporter.collector import StoreCollector
from leasestore import LeaseStore
from leasestore.db import queries as q

PG_DSN = os.environ.get("LEASESTORE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
EVENTS_PER_HOUR = 10_000
QUEUES = ("mail", "crawl", "summarise", "index")
# Mostly the claim/release traffic of healthy agents, with the rarer kinds the
# seven metrics count sprinkled in.
EVENT_MIX = [("enqueued", 30), ("claimed", 30), ("released", 28), ("retry_scheduled", 4), ("checkpointed", 4),
             ("taken_over", 1), ("recovered", 1), ("dead_lettered", 1), ("requeued", 1)]
LOCK_MIX = [("acquired", 40), ("released", 40), ("extended", 10), ("busy", 5), ("duplicate", 2),
            ("conflict", 1), ("recovered", 1), ("taken_over", 1)]
# What a scrape of the full table would add: the per-status counts the exporter
# derives from the log's increments instead.
FULL_TASK_COUNT = "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status"


def weighted(mix: list[tuple[str, int]], n: int, rng: random.Random) -> list[str]:
    names, weights = zip(*mix)
    return rng.choices(names, weights, k=n)


def rows(n: int, now: float) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(n)
    span = n / EVENTS_PER_HOUR * 3600.0
    stamps = sorted(now - span * rng.random() for _ in range(n))
    kinds = weighted(EVENT_MIX, n, rng)
    outcomes = weighted(LOCK_MIX, n, rng)
    events = [(ts, f"t{i // 5}", QUEUES[i % 4], kind, "agent-1", 1, 1) for i, (ts, kind) in enumerate(zip(stamps, kinds))]
    locks = [(ts, f"t{i // 5}", QUEUES[i % 4], "agent-1", "claim", outcome, 1)
             for i, (ts, outcome) in enumerate(zip(stamps, outcomes))]
    n_tasks = n // 5
    # A backlog that grows with the history, and a few hundred live leases.
    statuses = weighted([("done", 96), ("pending", 3), ("dead", 1)], n_tasks, rng)
    statuses[:300] = ["leased"] * min(300, n_tasks)
    tasks = [(f"t{i}", QUEUES[i % 4], status, 1, 3, 1, now - span * rng.random(), now - 60, now, now, now + 30)
             for i, status in enumerate(statuses)]
    return events, locks, tasks


EVENT_COLUMNS = "ts, task_id, queue, kind, owner, fencing_token, attempt"
LOCK_COLUMNS = "ts, task_id, queue, owner, op, outcome, fencing_token"
TASK_COLUMNS = "id, queue, status, attempts, max_attempts, fencing_token, created_at, leased_at, updated_at, available_at, lease_expires_at"


def seed_sqlite(path: str, n: int) -> None:
    events, locks, tasks = rows(n, time.time())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO event_log ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", events)
    conn.executemany(f"INSERT INTO lock_events ({LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", locks)
    conn.executemany(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def seed_postgresql(dsn: str, schema: str, n: int) -> None:
    events, locks, tasks = rows(n, time.time())
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
        with conn.cursor() as cur:
            for table, columns, data in (("event_log", EVENT_COLUMNS, events), ("lock_events", LOCK_COLUMNS, locks),
                                         ("tasks", TASK_COLUMNS, tasks)):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
        conn.commit()
        conn.execute("ANALYZE")


def timed(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000.0


def raw_statements(now: float) -> list[tuple[str, dict[str, Any]]]:
    """The statements of one scrape that do not depend on earlier scrapes."""
    return [(q.COUNT_METRIC_EVENTS_SINCE, {"since": now - 3600}), (q.COUNT_METRIC_LOCK_EVENTS_SINCE, {"since": now - 3600}),
            (q.COUNT_OPEN_DEAD_LETTERS, {}), (q.LEASES_BY_QUEUE, {}), (q.READY_PENDING_BY_QUEUE, {"now": now})]


Statements = Callable[[float], list[tuple[str, dict[str, Any]]]]


def full_count(_now: float) -> list[tuple[str, dict[str, Any]]]:
    return [(FULL_TASK_COUNT, {})]


def raw_sqlite(path: str, statements: Statements) -> Callable[[], None]:
    conn = sqlite3.connect(path, isolation_level=None)

    def run() -> None:
        conn.execute("BEGIN")
        for sql, params in statements(time.time()):
            conn.execute(sql, params).fetchall()
        conn.execute("COMMIT")

    return run


def raw_postgresql(dsn: str, schema: str, statements: Statements) -> Callable[[], None]:
    conn = psycopg.connect(dsn, options=f"-csearch_path={schema}", autocommit=True)

    def run() -> None:
        with conn.transaction(), conn.cursor() as cur:
            for sql, params in statements(time.time()):
                cur.execute(q.to_pyformat(sql), params)
                cur.fetchall()

    return run


@contextmanager
def sqlite_store(n: int) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "scrape.db")
        LeaseStore(path).close()
        seed_sqlite(path, n)
        yield path, raw_sqlite(path, raw_statements), raw_sqlite(path, full_count)


@contextmanager
def postgresql_store(n: int) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1) + f"?options=-csearch_path%3D{schema}"
        LeaseStore(url).close()
        seed_postgresql(PG_DSN, schema, n)
        yield url, raw_postgresql(PG_DSN, schema, raw_statements), raw_postgresql(PG_DSN, schema, full_count)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def measure(backend: str, n: int, repeats: int) -> tuple[float, float, float, float]:
    opener = sqlite_store if backend == "sqlite" else postgresql_store
    with opener(n) as (url, raw, full):
        collector = StoreCollector(url)
        first = timed(lambda: list(collector.collect()), 1)
        steady = timed(lambda: list(collector.collect()), repeats)
        up = [f for f in collector.collect() if f.name == "leasestore_up"][0].samples[0].value
        assert up == 1.0, "the collector could not read the seeded store"
        collector.close()
        baseline = timed(raw, repeats)
        full_ms = timed(full, repeats)
    return first, steady, baseline, full_ms


# --- busy: N rows inside the window -------------------------------------------------------

BUSY_TASKS = 20_000
BUSY_DEAD_LETTERS, BUSY_OPEN_DEAD_LETTERS = 1_000, 100
LIVE_SECONDS = 15.0  # traffic between two scrapes, for the "live" column
# The seven's kinds need reasons (dead_lettered: half retry_limit, half lease_expired).
REASONS = ("CASE kind WHEN 'retry_scheduled' THEN 'failed' WHEN 'recovered' THEN 'lease_expired' "
           "WHEN 'dead_lettered' THEN CASE WHEN (i / 100) % 2 = 0 THEN 'retry_limit' ELSE 'lease_expired' END END")


def mix_case(mix: list[tuple[str, int]], multiplier: int) -> str:
    """A CASE over ``i`` picking names in ``mix``'s proportions (weights sum to 100)."""
    arms, upto = [], 0
    for name, weight in mix:
        upto += weight
        arms.append(f"WHEN (i * {multiplier} + 13) % 100 < {upto} THEN '{name}'")
    assert upto == 100
    return "CASE " + " ".join(arms) + " END"


def traffic_sql(backend: str, start: float, rate: float, first: int, count: int) -> list[str]:
    """INSERT … SELECT statements writing ``count`` events and as many lock rows,
    row ``i`` (from ``first``) at ``start + (i - first) / rate``."""
    last = first + count - 1
    if backend == "postgresql":
        series = f"FROM generate_series({first}::bigint, {last}) AS s(i)"
        task = "'t' || lpad((i / 5)::text, 10, '0')"
        prefix = ""
    else:
        series = "FROM s"
        task = "printf('t%010d', i / 5)"
        prefix = f"WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM s WHERE i < {last}) "
    ts = f"{start!r} + (i - {first}) * {1.0 / rate!r}"
    queue = "CASE i % 4 " + " ".join(f"WHEN {n} THEN '{q}'" for n, q in enumerate(QUEUES)) + " END"
    return [
        f"INSERT INTO event_log ({EVENT_COLUMNS}, reason) {prefix}"
        f"SELECT ts, task_id, queue, kind, 'agent-1', 1, 1, {REASONS} FROM ("
        f"SELECT i, {ts} AS ts, {task} AS task_id, {queue} AS queue, {mix_case(EVENT_MIX, 7919)} AS kind "
        f"{series}) AS r",
        f"INSERT INTO lock_events ({LOCK_COLUMNS}) {prefix}"
        f"SELECT {ts}, {task}, {queue}, 'agent-1', 'claim', {mix_case(LOCK_MIX, 6421)}, 1 {series}",
    ]


def backlog_rows(now: float) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(1)
    statuses = weighted([("done", 96), ("pending", 3), ("dead", 1)], BUSY_TASKS, rng)
    statuses[:300] = ["leased"] * 300
    tasks = [(f"b{i}", QUEUES[i % 4], status, 1, 3, 1, now - 3600 * rng.random(), now - 60, now, now, now + 30)
             for i, status in enumerate(statuses)]
    dead = [(f"b{i}", QUEUES[i % 4], "retry_limit", 3, "boom", "open" if i < BUSY_OPEN_DEAD_LETTERS else "resolved",
             now - 3600 * rng.random()) for i in range(BUSY_DEAD_LETTERS)]
    return tasks, dead


DEAD_LETTER_COLUMNS = "task_id, queue, reason, attempts, last_error, status, created_at"


class Busy:
    """A store being written at ``n`` rows an hour, its window full."""

    def __init__(self, backend: str, n: int) -> None:
        self.backend, self.n = backend, n
        self.rate = n / 3600.0
        self.next_i = 0
        self.next_ts = 0.0
        self.closing: list[Callable[[], None]] = []  # the writers' connections

    def write(self, execute: Callable[[str], Any], start: float, seconds: float) -> None:
        """Write ``seconds`` of traffic from ``start`` on (one transaction)."""
        count = max(1, round(seconds * self.rate))
        for sql in traffic_sql(self.backend, start, self.rate, self.next_i, count):
            execute(sql)
        self.next_i += count
        self.next_ts = start + count / self.rate

    def seed_sqlite(self, path: str) -> None:
        now = time.time()
        tasks, dead = backlog_rows(now)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        self.write(conn.execute, now - 3600.0, 3600.0)
        conn.executemany(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)
        conn.executemany(f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", dead)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.close()

    def seed_postgresql(self, dsn: str, schema: str) -> None:
        now = time.time()
        tasks, dead = backlog_rows(now)
        with psycopg.connect(dsn, options=f"-csearch_path={schema}") as conn:
            with conn.cursor() as cur:
                self.write(lambda sql: cur.execute(sql), now - 3600.0, 3600.0)
                for table, columns, data in (("tasks", TASK_COLUMNS, tasks), ("dead_letters", DEAD_LETTER_COLUMNS, dead)):
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in data:
                            copy.write_row(row)
            conn.commit()
            conn.autocommit = True
            for table in ("event_log", "lock_events", "tasks", "dead_letters"):
                conn.execute(f"VACUUM ANALYZE {table}")

    def sqlite_writer(self, path: str) -> Callable[[float], None]:
        """Writes the traffic up to ``until``, one transaction a call."""
        conn = sqlite3.connect(path, isolation_level=None)
        self.closing.append(conn.close)

        def write(until: float) -> None:
            conn.execute("BEGIN IMMEDIATE")
            self.write(conn.execute, self.next_ts, until - self.next_ts)
            conn.execute("COMMIT")

        return write

    def postgresql_writer(self, dsn: str, schema: str) -> Callable[[float], None]:
        conn = psycopg.connect(dsn, options=f"-csearch_path={schema}", autocommit=True)
        self.closing.append(conn.close)

        def write(until: float) -> None:
            with conn.transaction(), conn.cursor() as cur:
                self.write(lambda sql: cur.execute(sql), self.next_ts, until - self.next_ts)

        return write


@contextmanager
def busy_store(busy: Busy) -> Iterator[tuple[str, Callable[[], None], Callable[[float], None]]]:
    if busy.backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "busy.db")
            LeaseStore(path).close()
            busy.seed_sqlite(path)
            yield path, raw_sqlite(path, raw_statements), busy.sqlite_writer(path)
        return
    schema = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1) + f"?options=-csearch_path%3D{schema}"
        LeaseStore(url).close()
        busy.seed_postgresql(PG_DSN, schema)
        yield url, raw_postgresql(PG_DSN, schema, raw_statements), busy.postgresql_writer(PG_DSN, schema)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def gauge(collector: StoreCollector, name: str) -> float:
    return float([f for f in collector.collect() if f.name == name][0].samples[0].value)


def measure_busy(backend: str, n: int, repeats: int, live_repeats: int) -> dict[str, float]:
    busy = Busy(backend, n)
    started = time.perf_counter()
    with busy_store(busy) as (url, raw, write):
        write(time.time())  # the traffic written while the store was being seeded
        seeded = time.perf_counter() - started
        collector = StoreCollector(url)
        first = timed(lambda: list(collector.collect()), 1)
        steady = timed(lambda: list(collector.collect()), repeats)
        assert gauge(collector, "leasestore_up") == 1.0, "the collector could not read the seeded store"
        # Sanity (tests/test_scrape_cost.py checks equality): 4% of the window's events are retries.
        retries = gauge(collector, "leasestore_retry_attempts")
        assert abs(retries - 0.04 * n) < 0.01 * n, (retries, n)
        baseline = timed(raw, max(3, min(repeats, 7)))
        live = []
        for _ in range(live_repeats):
            write(busy.next_ts + LIVE_SECONDS)
            live.append(timed(lambda: list(collector.collect()), 1))
        collector.close()
        for close in busy.closing:
            close()
    return {"seed": seeded, "first": first, "steady": steady, "raw": baseline,
            "live": statistics.median(live) if live else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sizes", default="10000,1000000", help="history: audit-log rows, comma-separated ('' skips)")
    parser.add_argument("--busy", default="1000000,10000000",
                        help="busy: events inside the 60-minute window, comma-separated ('' skips)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--live-repeats", type=int, default=5, help="busy: scrapes after 15 s of traffic each")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    busy_sizes = [int(s) for s in args.busy.split(",") if s]
    if sizes:
        print("history: ~10,000 events in the window, the log behind it growing")
        print(f"{'backend':<11}{'log rows':>10}{'first ms':>10}{'scrape ms':>11}{'raw ms':>9}{'vs raw':>8}"
              f"{'vs smallest':>13}{'full count ms':>15}")
        for backend in backends:
            smallest = None
            for n in sizes:
                first, steady, baseline, full_ms = measure(backend, n, args.repeats)
                smallest = smallest or steady
                print(f"{backend:<11}{n:>10}{first:>10.1f}{steady:>11.2f}{baseline:>9.2f}"
                      f"{steady / baseline:>8.2f}{steady / smallest:>12.2f}x{full_ms:>15.2f}", flush=True)
    if busy_sizes:
        print(f"busy: N events (and N lock rows) inside the 60-minute window; live = after {LIVE_SECONDS:g} s "
              "more traffic")
        print(f"{'backend':<11}{'in window':>11}{'seed s':>8}{'first ms':>10}{'scrape ms':>11}{'raw ms':>10}"
              f"{'vs raw':>8}{'vs smallest':>13}{'live ms':>9}")
        for backend in backends:
            smallest = None
            for n in busy_sizes:
                r = measure_busy(backend, n, args.repeats, args.live_repeats)
                smallest = smallest or r["steady"]
                print(f"{backend:<11}{n:>11}{r['seed']:>8.1f}{r['first']:>10.1f}{r['steady']:>11.2f}{r['raw']:>10.2f}"
                      f"{r['steady'] / r['raw']:>8.4f}{r['steady'] / smallest:>12.2f}x{r['live']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
