"""How the packages import one another: no circles, and a SQLite store that
never loads PostgreSQL's driver (every CLI call, worker and exporter on the
default backend starts that much sooner)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("leasestore", "exporter", "loadtest")


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """Every module of ours that ``name`` imports, at its top or inside a
    function (a deferred import still makes a circle)."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import caller`` imports a module; ``from .x import y`` imports x
            found.update(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                         for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for dep in sorted(edges[module]):
            if state.get(dep) == "open":
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return circles


def test_no_import_circles() -> None:
    modules = _modules()
    edges = {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}
    assert len(edges) > 30 and edges["leasestore.store"], "the import graph was not read"
    assert _circles(edges) == []


def test_the_circle_finder_finds_one() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


SQLITE_BOTH_FACES = """
import asyncio, sys
from leasestore import AsyncLeaseStore, LeaseStore

url = sys.argv[1]
with LeaseStore(url) as store:
    store.enqueue("q", task_id="one")
    with store.lease("q", "agent", ttl=5) as job:
        assert job is not None
        job.checkpoint({"step": 1})
    store.recover_stale()

async def main():
    async with AsyncLeaseStore(url) as store:
        await store.enqueue("q", task_id="two")
        async with store.lease("q", "agent", ttl=5) as job:
            assert job is not None
            await job.checkpoint({"step": 1})
        assert (await store.claim_task("q", "agent", wait=0.05)).lease is None

asyncio.run(main())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg_pool")))
"""


def test_a_sqlite_store_never_loads_psycopg(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SQLITE_BOTH_FACES, f"sqlite:///{tmp_path / 'store.db'}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_on_sqlite_never_loads_psycopg(tmp_path: Path) -> None:
    # One process runs the calls an operator makes, each through the CLI's entry point.
    calls = [["--help"], ["init-db"], ["enqueue", "q", "--id", "one"], ["claim", "q", "--owner", "op", "--json"],
             ["status", "--json"], ["metrics", "60", "--json"], ["recover"]]
    code = ("import json, sys; from leasestore.cli import main\n"
            "codes = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try:\n        codes.append(main(argv))\n    except SystemExit as exit:\n        codes.append(exit.code)\n"
            "print(json.dumps([codes, sorted(m for m in sys.modules if m.startswith('psycopg'))]), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(calls)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin",
                                           "LEASESTORE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"})
    codes, loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert [c or 0 for c in codes] == [0] * len(calls), done.stderr
    assert loaded == []
