"""Heartbeat latency on PostgreSQL: the one-statement path next to the full
transaction (BEGIN, now(), UPDATE, lock row, event row, COMMIT), alternated in
the same run on the same leases, plus a raw single UPDATE as the floor.

    .venv/bin/python benchmarks/heartbeat.py --beats 2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg

from leasestore import LeaseStore

PG_DSN = os.environ.get("LEASESTORE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
RAW = ("UPDATE tasks SET lease_expires_at = extract(epoch from clock_timestamp()) + 30 "
       "WHERE id = %s AND status = 'leased'")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beats", type=int, default=2000, help="heartbeats per path")
    parser.add_argument("--checkpoint", action="store_true", help="store a checkpoint with each beat")
    args = parser.parse_args()
    schema = "hb_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1) + f"?options=-csearch_path%3D{schema}"
        store = LeaseStore(url)
        store.enqueue("hb", task_id="task")
        lease = store.claim_task(task_id="task", owner="bench", ttl=600).lease
        assert lease is not None
        fused_dialect = store.database.dialect
        raw = psycopg.connect(PG_DSN, options=f"-csearch_path={schema}", autocommit=True)
        samples: dict[str, list[float]] = {"one statement": [], "full transaction": [], "raw UPDATE": []}
        extra = {"checkpoint": {"step": 1}} if args.checkpoint else {}
        for i in range(args.beats * 3):
            path = list(samples)[i % 3]
            started = time.perf_counter()
            if path == "raw UPDATE":
                raw.execute(RAW, ("task",))
            else:
                # The instance attribute shadows the class flag for this beat only.
                fused_dialect.supports_fused = path == "one statement"
                store.heartbeat(lease, ttl=600, **extra)
            samples[path].append(time.perf_counter() - started)
        floor = statistics.median(samples["raw UPDATE"]) * 1000
        print(f"{'path':<18}{'p50 ms':>8}{'p95 ms':>8}{'vs raw':>8}")
        for path, values in samples.items():
            p50, p95 = percentiles(values)
            print(f"{path:<18}{p50:>8.3f}{p95:>8.3f}{p50 / floor:>8.2f}")
        raw.close()
        store.close()
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
