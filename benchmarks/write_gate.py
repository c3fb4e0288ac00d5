"""SQLite's write gate, A/B: the library's WriteGate next to gates that wait in the kernel.

Claim+release cycles/s of the blocking library with each gate, in the same
cell (the sides take turns in short bursts, see store_vs_raw.measure_cell),
next to raw SQL sending the same statements:

* ``poll``: the library as it is (``leasestore.db.sqlite.WriteGate``: LOCK_NB
  polled at a 0.5 ms to 2 ms backoff until ``timeout``).
* ``helper``: a candidate that blocks in the kernel and keeps the timeout in any
  thread: one non-blocking try, then a helper thread blocks in
  ``flock(LOCK_EX)`` on the gate's descriptor (flock locks belong to the open
  file description, so the lock it takes is the caller's) while the caller
  waits on a condition at most until its deadline; a lock taken after the
  caller gave up is let go at once. It passes tests/test_faults.py -k sqlite
  (installed through a sitecustomize), SIGSTOPped holder included.
* ``blocking``: a blocking ``flock`` in the caller's thread with no timeout; not
  usable (a stopped holder blocks every writer forever), only the ceiling of
  waiting in the kernel.
* ``raw`` and ``raw+flock``: the raw cycle in sqlite3's busy handler, and behind
  a blocking flock.

    .venv/bin/python benchmarks/write_gate.py                       # 4 processes, 10 s per side
    .venv/bin/python benchmarks/write_gate.py --workers 1,4 --seconds 6
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_vs_raw import Job, Target, _int_list, check_statements, measure_cell, seed  # noqa: E402

from leasestore import errors  # noqa: E402
from leasestore.db import engine as engine_module  # noqa: E402
from leasestore.db import sqlite as sqlite_module  # noqa: E402

_HELPER_IDLE_SECONDS = 5.0


class _Waiter:
    """One process's blocked ``flock(LOCK_EX)``, made on a helper thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.cond = threading.Condition(threading.Lock())
        self.in_flight = False  # the helper is (about to be) blocked in flock
        self.wanted = False  # a caller waits for what the helper takes
        self.granted = False  # the helper took the lock for the waiting caller
        self.error: OSError | None = None
        self.thread: threading.Thread | None = None

    def acquire(self, deadline: float) -> bool:
        with self.cond:
            if not self.in_flight:  # else an earlier caller's flock is still blocked: wait for it
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                if time.monotonic() >= deadline:
                    return False
                self.in_flight = True
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="write-gate", daemon=True)
                    self.thread.start()
                else:
                    self.cond.notify_all()
            self.wanted = True
            try:
                while not self.granted:
                    if self.error is not None:
                        error, self.error = self.error, None
                        raise error
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self.cond.wait(remaining)
                self.granted = False
                return True
            finally:
                self.wanted = False

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.in_flight:
                    if not self.cond.wait(_HELPER_IDLE_SECONDS) and not self.in_flight:
                        self.thread = None
                        return
            error: OSError | None = None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError as exc:
                error = exc
            with self.cond:
                self.in_flight = False
                if error is not None:
                    self.error = error
                elif self.wanted:
                    self.granted = True
                else:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)  # its caller gave up
                self.cond.notify_all()


class HelperThreadGate(sqlite_module.WriteGate):
    """The candidate: waits in the kernel, bounded by ``timeout``, from any thread."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(path, timeout)
        self._waiter: _Waiter | None = None

    def hold(self) -> HelperThreadGate:  # type: ignore[override]
        return self

    def __enter__(self) -> None:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=self.timeout):
            raise errors.StoreBusy()
        try:
            if self._waiter is None or self._pid != os.getpid():
                self._waiter = _Waiter(self._descriptor())
            if not self._waiter.acquire(deadline):
                raise errors.StoreBusy()
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


class BlockingGate(sqlite_module.WriteGate):
    """No timeout: the ceiling of waiting in the kernel, not a usable gate."""

    def hold(self) -> BlockingGate:  # type: ignore[override]
        return self

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        fcntl.flock(self._descriptor(), fcntl.LOCK_EX)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


def _install(gate: type[sqlite_module.WriteGate]) -> None:
    setattr(engine_module, "WriteGate", gate)  # what open_database builds


def install_helper() -> None:
    _install(HelperThreadGate)


def install_blocking() -> None:
    _install(BlockingGate)


SIDES = [("poll (library)", Job("library")),
         ("helper thread", Job("library", setup="write_gate:install_helper")),
         ("blocking, no timeout", Job("library", setup="write_gate:install_blocking")),
         ("raw", Job("raw-sqlite")),
         ("raw+flock", Job("raw-sqlite-flock"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=_int_list, default=[4], help="comma-separated process counts (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per side (default 10)")
    parser.add_argument("--burst", type=float, default=0.25, help="seconds per turn (default 0.25)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target = Target("sqlite", Path(tmp))
        url = target.fresh()
        seed(url, 10)
        plan = check_statements("sqlite", url)
        print(f"{'gate':<22}{'procs':>6}{'cycles/s':>10}{'vs poll':>9}{'vs raw':>8}{'fair':>7}")
        for procs in args.workers:
            urls = []
            for _ in SIDES:
                urls.append(target.fresh())
                seed(urls[-1], int(10_000 + 12_000 * args.seconds))
            sides = measure_cell([job for _, job in SIDES], urls, procs, args.seconds, args.burst, plan)
            target.drop_all()
            poll, raw = sides[0].rate, sides[3].rate
            for (name, _), side in zip(SIDES, sides):
                dry = " !" if side.dry else ""
                print(f"{name:<22}{procs:>6}{side.rate:>10.0f}{side.rate / poll:>9.2f}{side.rate / raw:>8.2f}"
                      f"{side.fair:>7.2f}{dry}", flush=True)
    print(f"# fair: slowest worker's cycles over the fastest's; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
