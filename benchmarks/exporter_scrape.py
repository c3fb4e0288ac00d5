"""Exporter scrape time as the audit log grows, next to the raw SQL it stands on.

The store is seeded as if it had run at a steady 10,000 state changes an hour
for N / 10,000 hours: the metrics window (60 minutes) always holds about the
same number of rows, and the log behind it grows from 10,000 to 1,000,000.
"Flat" means the scrape at 1,000,000 rows costs about what it costs at 10,000.

For each size it reports the first scrape (which totals the audit log once;
the exporter does it at start), the median of the following scrapes, and the same
statements run through the bare driver (sqlite3 / psycopg) in the same run.

    .venv/bin/python benchmarks/exporter_scrape.py                         # SQLite and PostgreSQL
    .venv/bin/python benchmarks/exporter_scrape.py --backend sqlite --sizes 10000,1000000
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--sizes", default="10000,1000000", help="audit-log rows, comma-separated")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    print(f"{'backend':<11}{'log rows':>10}{'first ms':>10}{'scrape ms':>11}{'raw ms':>9}{'vs raw':>8}"
          f"{'vs smallest':>13}{'full count ms':>15}")
    for backend in backends:
        smallest = None
        for n in (int(s) for s in args.sizes.split(",")):
            first, steady, baseline, full_ms = measure(backend, n, args.repeats)
            smallest = smallest or steady
            print(f"{backend:<11}{n:>10}{first:>10.1f}{steady:>11.2f}{baseline:>9.2f}"
                  f"{steady / baseline:>8.2f}{steady / smallest:>12.2f}x{full_ms:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
