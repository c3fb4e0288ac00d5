"""Instructions per SQLite claim+release cycle, library and raw SQL, counted by valgrind.

Wall-clock ratios on a shared two-core machine move by several hundredths
from run to run; an instruction count does not. Each side runs in one process
under ``valgrind --tool=callgrind`` twice, with the same seeded store, once
for ``--cycles`` cycles and once for none: the difference, divided by the
cycles, is one cycle's cost without start-up. The raw side is
``store_vs_raw.py``'s (the library's statements through sqlite3, parameters as
the library sent them) without a gate; the library passes its write gate, as
in the benchmark's 1-process cell.

    .venv/bin/python benchmarks/cycle_instructions.py                 # both sides, 1,000 cycles
    .venv/bin/python benchmarks/cycle_instructions.py --cycles 3000
    .venv/bin/python benchmarks/cycle_instructions.py --side lib --cycles 500 --db /tmp/x.db   # the counted body
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_vs_raw as bench  # noqa: E402


def body(side: str, cycles: int, db: str) -> None:
    url = f"sqlite:///{db}"
    worker = bench.library_worker(url, "counted") if side == "lib" else bench.raw_sqlite_worker(
        url, "counted", bench.check_statements("sqlite", url))
    for _ in range(bench.WARM_CYCLES):
        assert worker.cycle()
    for _ in range(cycles):
        assert worker.cycle(), "the seeded queue ran dry"
    worker.close()


def counted(side: str, cycles: int, seeded: Path, work: Path) -> int:
    """Instructions of one run of ``body`` on a copy of the seeded store."""
    db = work / f"{side}-{cycles}.db"
    shutil.copy(seeded, db)
    out = work / f"{side}-{cycles}.callgrind"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
         "--side", side, "--cycles", str(cycles), "--db", str(db)],
        capture_output=True, text=True, check=True)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    assert found, done.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--side", choices=("lib", "raw"), help="run the counted body only (under valgrind)")
    parser.add_argument("--db", help="the store the body runs on")
    args = parser.parse_args()
    if args.side is not None:
        body(args.side, args.cycles, args.db)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seeded = work / "seeded.db"
        # Both runs of both sides start from this very file: the same rows, the same pages.
        bench.seed(f"sqlite:///{seeded}", args.cycles + 2 * bench.WARM_CYCLES + 10)
        per_cycle = {}
        for side in ("lib", "raw"):
            per_cycle[side] = (counted(side, args.cycles, seeded, work) - counted(side, 0, seeded, work)) / args.cycles
            print(f"{side}: {per_cycle[side] / 1000:,.1f}k instructions per claim+release cycle", flush=True)
        print(f"raw / lib: {per_cycle['raw'] / per_cycle['lib']:.3f} (the benchmark's 1-process ratio, "
              f"by instructions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
