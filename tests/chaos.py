"""Harness for the fault tests: real worker processes, a sweeper, figures, snapshots.

Each fault test reports one line of figures (``FAULT-FIGURES {json}``), printed
(``pytest -s -k faults`` shows them) and appended to ``out/fault-figures.jsonl``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg

from leasestore import LeaseStore

WORKER = str(Path(__file__).with_name("chaos_worker.py"))
FIGURES_FILE = Path(__file__).resolve().parent.parent / "out" / "fault-figures.jsonl"
TABLES = ("tasks", "event_log", "lock_events", "dead_letters", "alerts", "leasestore_meta")

collected: list[dict[str, Any]] = []


@dataclass
class Figures:
    test: str
    backend: str
    tasks: int
    workers: int
    faults: int
    lost: int
    violations: int
    drain_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self) -> None:
        row = asdict(self)
        row["drain_seconds"] = round(self.drain_seconds, 2)
        collected.append(row)
        line = json.dumps(row, sort_keys=True)
        print(f"\nFAULT-FIGURES {line}")
        try:
            FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
            with FIGURES_FILE.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            pass  # the figures are printed anyway


class Worker:
    """One ``chaos_worker.py`` process."""

    def __init__(self, mode: str, db: str, owner: str, tmp: Path, **options: Any) -> None:
        self.owner = owner
        self.stats_path = tmp / f"{owner}.json"
        self.stderr_path = tmp / f"{owner}.err"
        argv = [sys.executable, WORKER, mode, "--db", db, "--owner", owner]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        if mode == "drain":
            argv += ["--stats", str(self.stats_path)]
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if mode == "stale" else subprocess.DEVNULL,
                                         stderr=err, text=True, bufsize=1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def readline(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"{self.owner} ended early: {self.stderr_path.read_text()[-2000:]}")
        return json.loads(line)

    def result(self, timeout: float) -> dict[str, Any]:
        self.proc.wait(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"{self.owner} exited {self.proc.returncode}: "
                                 f"{self.stderr_path.read_text()[-2000:]}")
        if self.stats_path.exists():
            return json.loads(self.stats_path.read_text())
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.read().strip().splitlines()[-1])


def wait_all(workers: list[Worker], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    try:
        return [w.result(max(0.1, deadline - time.monotonic())) for w in workers]
    finally:
        for w in workers:
            w.kill()


def merged_errors(results: list[dict[str, Any]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.get("errors", {}))
    return total


class Sweeper(threading.Thread):
    """``recover_stale`` every ``interval`` seconds: the recovery loop S."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(name="sweeper", daemon=True)
        self.store = LeaseStore(url, init=False)
        self.interval = interval
        self.stop = threading.Event()
        self.recovered = self.dead_lettered = self.failed = 0
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                report = self.store.recover_stale()
            except Exception as exc:  # the loop must outlive a dropped connection
                self.errors[type(exc).__name__] += 1
                continue
            self.recovered += report.recovered
            self.dead_lettered += report.dead_lettered
            self.failed += report.failed

    def __enter__(self) -> Sweeper:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
        self.store.close()


def snapshot(store: LeaseStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for before/after comparisons."""
    def body(cur: Any, now: float) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in TABLES:
            rows = store.database.dialect.fetchall(cur, f"SELECT * FROM {table}")
            out[table] = sorted((tuple(r) for r in rows), key=repr)
        return out

    return store._read(body)


def sqlite_integrity(path: str) -> str:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def pg_schema(pg_url: str) -> str:
    options = parse_qs(urlsplit(pg_url).query).get("options", [""])[0]
    return unquote(options).split("search_path=", 1)[1].split()[0]


@contextmanager
def pg_role(pg_url: str, admin_dsn: str) -> Iterator[tuple[str, str]]:
    """A login role of its own for this test's workers, so the server-side
    faults (terminations, read-only sessions) hit them and nobody else.
    Yields (role, URL connecting as it)."""
    schema = pg_schema(pg_url)
    role = "chaos_" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')
    user_part = urlsplit(pg_url).netloc.split("@", 1)[0]
    try:
        yield role, pg_url.replace(f"//{user_part}@", f"//{role}@", 1)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def terminate_backends(admin_dsn: str, role: str) -> int:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                            (role,)).fetchall()
    return sum(1 for r in rows if r[0])
