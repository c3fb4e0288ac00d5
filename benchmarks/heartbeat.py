"""Heartbeat latency: ``LeaseStore.heartbeat`` next to raw SQL sending the same statements.

Both sides extend the same lease, beat by beat alternated in one run, so drift
on a shared machine hits both alike; the ratio is the library's own cost.

* PostgreSQL (default): the library sends one autocommitted statement, the
  HEARTBEAT CTE of leasestore/db/postgresql.py (UPDATE + lock row, + the
  checkpoint event with ``--checkpoint``); the raw side sends that same text
  through a bare psycopg connection.
* SQLite: ``BEGIN IMMEDIATE``, the clock check (SELECT_CLOCK_HIGH_WATER, when
  the library makes it), EXTEND, INSERT_LOCK_EVENT (+ INSERT_EVENT with
  ``--checkpoint``), ``COMMIT`` from leasestore/db/queries.py, through sqlite3
  (the library also passes its write gate).

The statements are checked first: one library heartbeat is recorded and
compared with the raw side's list, and its parameters are what the raw side
sends (see store_vs_raw.plan_for).

    .venv/bin/python benchmarks/heartbeat.py --beats 2000
    .venv/bin/python benchmarks/heartbeat.py --checkpoint
    .venv/bin/python benchmarks/heartbeat.py --backend sqlite
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_vs_raw import (  # noqa: E402 - the benchmarks folder is not a package
    SELECT_CLOCK_HIGH_WATER,
    Plan,
    Steps,
    Target,
    _raw_write_now,
    _sqlite_connect,
    _sqlite_path,
    plan_for,
    recording_statements,
)

from leasestore import LeaseStore  # noqa: E402
from leasestore.db import postgresql as pg_sql  # noqa: E402
from leasestore.db import queries as q  # noqa: E402

TTL = 600.0
CHECKPOINT = {"step": 1}


PG_BEAT: Steps = [("beat", pg_sql.HEARTBEAT, set())]  # one lease, beat after beat: every parameter as sent


def sqlite_beat(checkpointing: bool) -> Steps:
    return [("begin", "BEGIN IMMEDIATE", set()), ("clock", SELECT_CLOCK_HIGH_WATER, set()),
            ("extend", q.EXTEND, {"now"}), ("lock", q.INSERT_LOCK_EVENT, {"now"}),
            *([("event", q.INSERT_EVENT, {"now"})] if checkpointing else []), ("commit", "COMMIT", set())]


def raw_pg(url: str, plan: Plan) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)
    cur = conn.cursor()
    params = plan.params["beat"]

    def beat() -> None:
        if cur.execute(pg_sql.HEARTBEAT, params).fetchone() is None:
            raise SystemExit("raw heartbeat refused: the lease is gone")

    return beat, conn.close


def raw_sqlite(url: str, plan: Plan) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = _sqlite_connect(_sqlite_path(url))
    t = plan.params

    def beat() -> None:
        conn.execute("BEGIN IMMEDIATE")
        now = _raw_write_now(conn, plan.clock_check)
        if conn.execute(q.EXTEND, {**t["extend"], "now": now}).fetchone() is None:
            raise SystemExit("raw heartbeat refused: the lease is gone")
        conn.execute(q.INSERT_LOCK_EVENT, {**t["lock"], "now": now})
        if "event" in t:
            conn.execute(q.INSERT_EVENT, {**t["event"], "now": now})
        conn.execute("COMMIT")

    return beat, conn.close


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def run(backend: str, beats: int, checkpointing: bool, root: Path) -> None:
    target = Target(backend, root)
    try:
        url = target.fresh()
        store = LeaseStore(url)
        store.enqueue("hb", task_id="task")
        lease = store.claim_task(task_id="task", owner="bench", ttl=TTL).lease
        assert lease is not None
        extra: dict[str, Any] = {"checkpoint": CHECKPOINT} if checkpointing else {}

        def library_beat() -> None:
            store.heartbeat(lease, ttl=TTL, **extra)

        with recording_statements() as sent:
            library_beat()
        if backend == "postgresql":
            plan = plan_for("postgresql heartbeat", sent, PG_BEAT)
            raw_beat, raw_close = raw_pg(url, plan)
        else:
            plan = plan_for("sqlite heartbeat", sent, sqlite_beat(checkpointing))
            raw_beat, raw_close = raw_sqlite(url, plan)
        print(f"# {backend}: the raw side sends the library's {len(plan.params)} statement(s) per heartbeat with "
              f"its parameters{' (and its clock check)' if plan.clock_check else ''} (checked)")
        for _ in range(50):  # connections open, statements prepared
            library_beat()
            raw_beat()
        samples: dict[str, list[float]] = {"library": [], "raw": []}
        sides = [("library", library_beat), ("raw", raw_beat)]
        for i in range(beats * 2):
            name, beat = sides[(i + i // 2) % 2]  # library, raw, raw, library, …: neither always goes first
            started = time.perf_counter()
            beat()
            samples[name].append(time.perf_counter() - started)
        lib_p50, lib_p95 = percentiles(samples["library"])
        raw_p50, raw_p95 = percentiles(samples["raw"])
        lib_mean, raw_mean = statistics.fmean(samples["library"]), statistics.fmean(samples["raw"])
        label = backend + (" +checkpoint" if checkpointing else "")
        print(f"{'backend':<24}{'side':<9}{'p50 ms':>8}{'p95 ms':>8}{'mean ms':>9}")
        print(f"{label:<24}{'library':<9}{lib_p50:>8.3f}{lib_p95:>8.3f}{lib_mean * 1000:>9.3f}")
        print(f"{label:<24}{'raw':<9}{raw_p50:>8.3f}{raw_p95:>8.3f}{raw_mean * 1000:>9.3f}")
        print(f"{label:<24}{'ratio':<9}{raw_p50 / lib_p50:>8.2f}{raw_p95 / lib_p95:>8.2f}{raw_mean / lib_mean:>9.2f}"
              f"   (raw time ÷ library time: the library's speed as a share of raw)", flush=True)
        raw_close()
        store.close()
    finally:
        target.drop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument("--beats", type=int, default=2000, help="heartbeats per side")
    parser.add_argument("--checkpoint", action="store_true", help="store a checkpoint with each beat")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            run(backend, args.beats, args.checkpoint, Path(tmp))


if __name__ == "__main__":
    main()
