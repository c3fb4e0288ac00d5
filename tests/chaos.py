"""Harness for the fault tests: real worker processes, a sweeper, figures, snapshots.

Each fault test reports one line of figures (``FAULT-FIGURES {json}``), printed
(``pytest -s -k faults`` shows them) and appended to ``out/fault-figures.jsonl``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
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

import chaos_worker

# Workers fork from a server that has imported the store once. Each child
# also imports the parent's __main__ (pytest's, under pytest): preload it too.
_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["chaos_worker", "pytest"])
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
    """One agent process (``chaos_worker.run``), forked from the preloaded forkserver."""

    def __init__(self, mode: str, db: str, owner: str, tmp: Path, **options: Any) -> None:
        self.owner = owner
        self.stats_path = tmp / f"{owner}.json"
        self.stderr_path = tmp / f"{owner}.err"
        argv = [mode, "--db", db, "--owner", owner, "--stats", str(self.stats_path),
                "--stderr", str(self.stderr_path)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        self._progress, channel = _CTX.Pipe(duplex=False)
        self.proc = _CTX.Process(target=chaos_worker.run, args=(argv, channel), name=owner, daemon=True)
        self.proc.start()
        channel.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.signal(signal.SIGKILL)
        self.proc.join()
        self._progress.close()

    def _diagnostics(self) -> str:
        return self.stderr_path.read_text()[-2000:] if self.stderr_path.exists() else ""

    def readline(self, timeout: float = 30) -> dict[str, Any]:
        """The next progress message of a ``stale`` worker."""
        if not self._progress.poll(timeout):
            raise AssertionError(f"{self.owner} said nothing for {timeout} s: {self._diagnostics()}")
        try:
            return self._progress.recv()
        except EOFError:
            raise AssertionError(f"{self.owner} ended early: {self._diagnostics()}") from None

    def result(self, timeout: float) -> dict[str, Any]:
        self.proc.join(timeout)
        if self.proc.exitcode != 0:
            raise AssertionError(f"{self.owner} exit code {self.proc.exitcode}: {self._diagnostics()}")
        return json.loads(self.stats_path.read_text())


def start_together(workers: list[Worker], go: Path, timeout: float = 60) -> None:
    """Wait until every worker (started with ``go=…``) is up, then let them all go."""
    deadline = time.monotonic() + timeout
    for w in workers:
        while not w.stats_path.with_suffix(".ready").exists():
            if w.proc.exitcode is not None or time.monotonic() > deadline:
                raise AssertionError(f"{w.owner} did not come up: {w._diagnostics()}")
            time.sleep(0.01)
    go.touch()


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
    return {table: sorted((tuple(r) for r in store.database.query(f"SELECT * FROM {table}")), key=repr)
            for table in TABLES}


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
