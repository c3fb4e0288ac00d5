"""The exporter's seven gauges, counted incrementally, equal ``compute_metrics``.

A scrape reads only the audit rows added since the previous one (and ids it
found missing, which a PostgreSQL transaction may still commit), keeps the
seven's rows in time buckets and counts the window's partial first bucket
exactly. These tests check the result against the plain windowed ``GROUP BY``
(:func:`raw_counts`, what ``leasestore metrics`` runs) in the same snapshot and
at the same "now", at many random points while writers keep writing, with rows
exactly at the window's start and at bucket edges, on a real SQLite file and a
real PostgreSQL; and that a scrape costs the new rows, not the window's.
"""

from __future__ import annotations

import math
import random
import sqlite3
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import StoreCollector
from leasestore import NO_BACKOFF, LeaseStore
from leasestore.db import queries as q
from leasestore.db.driver import Step
from leasestore.db.queries import Grouping
from leasestore.errors import LeaseStoreError
from leasestore.metrics import METRICS, ScrapeCounts, bucket_width, compute_metrics, raw_counts
from tests.conftest import PG_DSN

BASE = 1_700_000_000.0  # virtual time starts here; k / 8 steps from it are exact
WINDOWS = (0.05, 1.0, 60.0, 600.0)  # minutes: shorter than SETTLE_SECONDS, 1 s buckets, the default, 16 s buckets
QUEUES = ("mail", "crawl", "index")
EVENT_KINDS = [("retry_scheduled", "failed"), ("dead_lettered", "retry_limit"), ("dead_lettered", "lease_expired"),
               ("taken_over", None), ("recovered", "lease_expired"), ("claimed", None), ("released", None),
               ("enqueued", None)]
LOCK_OUTCOMES = ["duplicate", "busy", "conflict", "recovered", "recover_dead_lettered", "recover_failed",
                 "acquired", "released", "extended"]


def is_pg(url: str) -> bool:
    return url.startswith("postgresql")


def raw_connect(url: str) -> Any:
    """A bare connection to the store, for audit rows written by hand."""
    if is_pg(url):
        options = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["options"][0]
        return psycopg.connect(PG_DSN, options=options)
    return sqlite3.connect(url, isolation_level=None, timeout=30)


def insert_rows(conn: Any, url: str, stamps: list[float], rng: random.Random, commit: bool = True) -> None:
    """One transaction of audit rows at ``stamps`` (half events, half lock rows)."""
    events, locks = [], []
    for ts in stamps:
        if rng.random() < 0.5:
            kind, reason = rng.choice(EVENT_KINDS)
            events.append((ts, f"raw-{rng.randrange(10**6)}", rng.choice(QUEUES), kind, reason))
        else:
            locks.append((ts, rng.choice(QUEUES), rng.choice(LOCK_OUTCOMES)))
    mark = "%s" if is_pg(url) else "?"
    if not is_pg(url):
        conn.execute("BEGIN IMMEDIATE")
    cur = conn.cursor()
    if events:
        cur.executemany(f"INSERT INTO event_log (ts, task_id, queue, kind, reason) VALUES ({mark}, {mark}, {mark}, "
                        f"{mark}, {mark})", events)
    if locks:
        cur.executemany(f"INSERT INTO lock_events (ts, queue, op, outcome) VALUES ({mark}, {mark}, 'claim', {mark})",
                        locks)
    if commit:
        conn.commit() if is_pg(url) else conn.execute("COMMIT")


def compare(reader: LeaseStore, counters: list[ScrapeCounts], now: float) -> None:
    """Every counter's seven equal raw_counts' at ``now``, and its audit totals
    (the exporter's counters) a plain count of the tables, in one snapshot."""
    reader.clock.frozen = now
    d = reader.database.driver

    def plain_totals(grouping: Grouping) -> Step[dict[Any, int]]:
        rows = yield from d.grouped_counts(grouping, 0, 2**62)
        return {tuple(r[:-2]) if len(r) > 3 else r[0]: int(r[-2]) for r in rows}

    def both(now: float) -> Step[list[tuple[Any, Any]]]:
        pairs: list[tuple[Any, Any]] = []
        for counter in counters:
            mine = yield from counter.read(d, now)
            plain = yield from raw_counts(d, now - counter.window_minutes * 60.0)
            pairs.append((mine, plain))
            totals = (counter.event_kinds, counter.transitions, counter.lock_outcomes)
            pairs.append((totals, ((yield from plain_totals("event_kind")), (yield from plain_totals("event_transition")),
                                   (yield from plain_totals("lock_outcome")))))
        return pairs

    for i, (mine, plain) in enumerate(reader.database.read(both)):
        assert mine == plain, f"window {counters[i // 2].window_minutes} min at now={now!r} ({'seven totals'.split()[i % 2]})"


class Writers:
    """A thread running store operations (claims, releases, conflicts, recoveries,
    dead letters) on a frozen clock that follows the test's virtual time.
    ``paused()`` holds it between operations, so no write transaction is open."""

    def __init__(self, url: str, seed: int) -> None:
        self.vt = BASE
        self._url = url
        self._rng = random.Random(seed)
        self._gate = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.operations = 0
        self.failure: BaseException | None = None

    def __enter__(self) -> Writers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.failure is not None:
            raise self.failure

    @contextmanager
    def paused(self) -> Iterator[None]:
        with self._gate:
            yield

    def _run(self) -> None:
        store = LeaseStore(self._url, init=False, retry_policy=NO_BACKOFF, clock_tolerance=None)
        rng, leases, tasks = self._rng, list[Any](), list[str]()
        try:
            while not self._stop.is_set():
                with self._gate:
                    store.clock.frozen = self.vt + rng.random()
                    try:
                        self._step(store, rng, leases, tasks)
                    except LeaseStoreError:
                        pass  # a lost lease, a busy task, a dead letter already closed: all recorded
                    self.operations += 1
                time.sleep(0)
        except BaseException as exc:  # reported by __exit__
            self.failure = exc
        finally:
            store.close()

    def _step(self, store: LeaseStore, rng: random.Random, leases: list[Any], tasks: list[str]) -> None:
        roll = rng.random()
        if roll < 0.25 or not tasks:
            tasks.append(store.enqueue(rng.choice(QUEUES), max_attempts=rng.choice((1, 2, 3))).task_id)
        elif roll < 0.5:
            lease = store.claim_task(task_id=rng.choice(tasks), owner=rng.choice("abc"), ttl=rng.choice((2, 30)))
            if lease.lease is not None:
                leases.append(lease.lease)
        elif roll < 0.7 and leases:
            lease = leases.pop(rng.randrange(len(leases)))
            store.release_task(lease, rng.choice(("done", "failed")), "boom")
        elif roll < 0.8 and leases:
            store.heartbeat(rng.choice(leases), ttl=5)  # stale ones are conflicts
        elif roll < 0.9:
            store.recover_stale()
        else:
            for dead in store.list_dead_letters(limit=3)[:1]:
                if rng.random() < 0.5:
                    store.requeue_dead_letter(dead.id)
                else:
                    store.resolve_dead_letter(dead.id, "fixed")


@pytest.mark.parametrize("seed", [1, 2])
def test_seven_equal_compute_metrics_while_writes_go_on(db_url: str, seed: int) -> None:
    """At random "now"s, some exactly one window after a row (the row on the
    window's start), some on bucket edges, some after the clock stepped back,
    while a writer thread writes and, on PostgreSQL, transactions commit ids out
    of order or roll back, the incremental seven equal the plain count."""
    rng = random.Random(seed)
    LeaseStore(db_url).close()
    reader = LeaseStore(db_url, init=False)
    counters = [ScrapeCounts(w) for w in WINDOWS]
    conn = raw_connect(db_url)
    held: list[Any] = []  # open transactions holding ids (PostgreSQL)
    stamps: list[float] = []  # every hand-written row's ts, to aim "now" at
    try:
        with Writers(db_url, seed) as writers:
            for step in range(160):
                vt = writers.vt
                if step % 20 == 0:
                    # Writers paused and nothing held open: rows anywhere in the
                    # windows (back-dated), and "now" far ahead or behind.
                    with writers.paused():
                        for h in held:
                            h.commit() if rng.random() < 0.7 else h.rollback()
                            h.close()
                        held.clear()
                        back = [vt - rng.uniform(0, 600 * 60 * 1.2) for _ in range(300)]
                        # future window starts, to the eighth of a second (exact)
                        back += [round((vt + rng.uniform(0, 400) - w * 60) * 8) / 8
                                 for w in WINDOWS for _ in range(10)]
                        back += [float(int(vt - rng.uniform(0, 3600))) for _ in range(30)]  # bucket edges
                        insert_rows(conn, db_url, back, rng)
                        stamps += back
                        compare(reader, counters, vt + rng.choice((-7200.0, -90.0, 0.0, 45.0, 5000.0)))
                        compare(reader, counters, vt)
                # Recent rows, committed, rolled back, or held open across reads.
                recent = [vt + rng.uniform(-2, 2) for _ in range(rng.randrange(1, 12))]
                roll = rng.random()
                if is_pg(db_url) and roll < 0.25:
                    h = raw_connect(db_url)
                    insert_rows(h, db_url, recent, rng, commit=False)
                    held.append(h)
                elif is_pg(db_url) and roll < 0.35:
                    insert_rows(conn, db_url, recent, rng, commit=False)
                    conn.rollback()
                else:
                    insert_rows(conn, db_url, recent, rng)
                stamps += recent
                if held and rng.random() < 0.5:
                    h = held.pop(rng.randrange(len(held)))
                    h.commit() if rng.random() < 0.8 else h.rollback()
                    h.close()
                # "now": plain, on a row's window start, or on a bucket edge of the window start
                window = rng.choice(WINDOWS) * 60.0
                near = [ts for ts in stamps if abs(ts + window - vt) < 3]
                choice = rng.random()
                if near and choice < 0.5:
                    now = rng.choice(near) + window
                elif choice < 0.7:  # the window starts on a bucket edge (16 s: an edge of every width used)
                    now = math.floor((vt - window) / 16) * 16 + window
                else:
                    now = vt + rng.uniform(-1, 1)
                compare(reader, counters, now)
                writers.vt = vt + rng.choice((0.0, 0.125, 0.5, 1.0, 2.5))
            assert writers.operations > 50
    finally:
        for h in held:
            h.rollback()
            h.close()
        conn.close()
        reader.close()


def test_rows_exactly_on_the_window_start(db_url: str) -> None:
    """A row whose ts is the window's start is in the window; one a hair before
    is not, in whole buckets and in the partial one, for every bucket width."""
    LeaseStore(db_url).close()
    reader = LeaseStore(db_url, init=False)
    conn = raw_connect(db_url)
    rng = random.Random(7)
    try:
        for minutes in (1.0, 60.0, 600.0):
            window = minutes * 60.0
            width = bucket_width(window)
            edge = BASE + 1000 * width  # a bucket edge
            inside = [edge, edge + 0.125, edge + width / 2, edge + width]
            outside = [edge - 0.125, edge - width / 2]
            conn_stamps = [t for t in inside + outside for _ in range(3)]
            insert_rows(conn, db_url, conn_stamps, rng)
            counter = ScrapeCounts(minutes)
            for start in sorted(inside + outside + [edge - width, edge + 2 * width]):
                compare(reader, [counter], start + window)
            for start in sorted(inside + outside, reverse=True):  # and with the clock going back
                compare(reader, [counter], start + window)
        # The default window counted from scratch against a known figure.
        reader.clock.frozen = BASE + 3600.0
        counter = ScrapeCounts(60.0)
        values = reader.database.read(lambda now: counter.read(reader.database.driver, now))
        plain = compute_metrics(reader, 60.0)
        assert {m.key: values[m.key] for m in METRICS} == {m.key: plain[m.key].value for m in METRICS}
        assert sum(values[m.key] for m in METRICS) > 0
    finally:
        conn.close()
        reader.close()


def test_collector_gauges_equal_compute_metrics(db_url: str) -> None:
    """The collector's seven gauges (not just the counting) equal compute_metrics
    for the same window and "now", scrape after scrape, with writes in between."""
    rng = random.Random(3)
    LeaseStore(db_url).close()
    opened: list[LeaseStore] = []
    now_box = [BASE]

    def open_store() -> LeaseStore:
        store = LeaseStore(db_url, init=False)
        store.clock.frozen = now_box[0]
        opened.append(store)
        return store

    collector = StoreCollector(db_url, window_minutes=1.0, open_store=open_store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    reader = LeaseStore(db_url, init=False)
    writer = LeaseStore(db_url, init=False, retry_policy=NO_BACKOFF, clock_tolerance=None)
    conn = raw_connect(db_url)
    try:
        vt = BASE
        for _ in range(40):
            writer.clock.frozen = vt
            task = writer.enqueue("mail", max_attempts=2).task_id
            writer.claim_task(task_id=task, owner="w", ttl=5)
            lease = writer.claim_task(task_id=task, owner="w").lease  # a duplicate: the lease again, new secret
            assert lease is not None
            writer.claim_task(task_id=task, owner="x")  # busy
            writer.release_task(lease, "failed", "boom")
            stamps = [vt - rng.uniform(0, 70) for _ in range(20)] + [round((vt - 60 + rng.uniform(0, 3)) * 8) / 8]
            insert_rows(conn, db_url, stamps, rng)
            now = rng.choice((vt, stamps[-1] + 60.0, float(int(vt))))
            now_box[0] = now
            for store in opened:
                store.clock.frozen = now
            reader.clock.frozen = now
            report = compute_metrics(reader, 1.0)
            families = {f.name: f for f in collector.collect()}
            assert families["leasestore_up"].samples[0].value == 1
            for metric in METRICS:
                assert families[metric.gauge].samples[0].value == report[metric.key].value, metric.gauge
            vt += rng.uniform(0.5, 8)
    finally:
        conn.close()
        collector.close()
        writer.close()
        reader.close()


# --- cost --------------------------------------------------------------------------------------

def seed_window(url: str, n: int, now: float) -> None:
    """``n`` events and ``n`` lock rows spread over the hour before ``now``."""
    kinds = "CASE WHEN i % 25 = 0 THEN 'retry_scheduled' WHEN i % 50 = 1 THEN 'dead_lettered' ELSE 'claimed' END"
    outcomes = "CASE WHEN i % 20 = 0 THEN 'busy' WHEN i % 50 = 1 THEN 'duplicate' ELSE 'acquired' END"
    stamp = f"{now!r} - 3600.0 + i * {3600.0 / n!r}"
    if is_pg(url):
        series = f"generate_series(0, {n - 1}) AS s(i)"
        with raw_connect(url) as conn:
            conn.execute(f"INSERT INTO event_log (ts, task_id, queue, kind, reason) "
                         f"SELECT {stamp}, 't' || i, 'mail', {kinds}, 'failed' FROM {series}")
            conn.execute(f"INSERT INTO lock_events (ts, queue, op, outcome) "
                         f"SELECT {stamp}, 'mail', 'claim', {outcomes} FROM {series}")
            conn.commit()
            conn.execute("ANALYZE")
        return
    conn = raw_connect(url)
    series = f"WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < {n - 1})"
    conn.execute("BEGIN")
    conn.execute(f"INSERT INTO event_log (ts, task_id, queue, kind, reason) {series} "
                 f"SELECT {stamp}, 't' || i, 'mail', {kinds}, 'failed' FROM s")
    conn.execute(f"INSERT INTO lock_events (ts, queue, op, outcome) {series} "
                 f"SELECT {stamp}, 'mail', 'claim', {outcomes} FROM s")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def timed(fn: Callable[[], Any], repeats: int = 15) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def test_a_scrape_costs_the_new_rows_not_the_window(db_url: str) -> None:
    """With 200,000 events in the window, a scrape after the first one costs a
    small fraction of the plain windowed statements, and the values agree."""
    LeaseStore(db_url).close()
    reader = LeaseStore(db_url, init=False)
    reader.clock.frozen = now = time.time()
    seed_window(db_url, 200_000, now)
    counter = ScrapeCounts(60.0)
    d = reader.database.driver
    reader.database.read(lambda now: counter.read(d, now))  # the first read totals the log once
    incremental = timed(lambda: reader.database.read(lambda now: counter.read(d, now)))
    plain = timed(lambda: reader.database.read(lambda now: raw_counts(d, now - 3600.0)))
    values = reader.database.read(lambda now: counter.read(d, now))
    assert values == reader.database.read(lambda now: raw_counts(d, now - 3600.0))
    assert values["retryAttempts"] == 200_000 // 25
    reader.close()
    assert incremental < plain / 5, (incremental, plain)


def test_statements_read_by_id_range_or_index(sqlite_url: str) -> None:
    """On SQLite (whose planner has no statistics for an id range), the tail
    statements read the primary key's range and the window statements the
    (kind, ts) / (outcome, ts) indexes: never the window's rows."""
    LeaseStore(sqlite_url).close()
    conn = sqlite3.connect(sqlite_url)
    params = {"after": 1, "upto": 2, "keep_from": 0.0, "width": 1.0, "cutoff": 0.0, "since": 0.0, "until": 1.0,
              **{f"lo{i}": 1 for i in range(q.AUDIT_RANGE_SLOTS)}, **{f"hi{i}": 0 for i in range(q.AUDIT_RANGE_SLOTS)}}
    for table in ("event_log", "lock_events"):
        for statement in (q.AUDIT_TAIL[table], q.AUDIT_ID_GAPS[table],
                          q.AUDIT_ROWS_IN[table]):
            plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + statement, params))
            assert "INTEGER PRIMARY KEY" in plan and "INDEX ix_" not in plan, plan
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.AUDIT_WINDOW_BUCKETS[table], params))
        assert "INDEX ix_" in plan and "ts>? AND ts<?" in plan, plan
    # deadLettersOpen (not windowed) counts the open ones on the status index, not the table
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.COUNT_OPEN_DEAD_LETTERS))
    assert "COVERING INDEX ix_dead_letters_status (status=?)" in plan, plan
    conn.close()
