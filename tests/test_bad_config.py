"""Bad configuration and read-only media (issue 12, items 1 and 2).

1. An explicitly empty database value (``--db ''``, ``LEASESTORE_DATABASE_URL=''``,
   ``ORCH_DB_PATH=''``, ``LeaseStore('')``) is refused; it never falls back to
   the default store, and no file is created anywhere.
2. A store path whose folder cannot be created is a typed one-line error; a
   store on a read-only filesystem can be read, and every write is refused
   with ``StoreReadOnly`` ("database is read-only: ...") and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from leasestore import AsyncLeaseStore, ConfigurationError, LeaseStore, StoreReadOnly
from leasestore.metrics import METRICS, compute_metrics, record_alerts
from leasestore.settings import DEFAULT_DB_PATH, resolve_database_url

EXE = str(Path(sys.executable).with_name("leasestore"))


# --- 1. an empty value is refused, never the default store ------------------------------------

@dataclass
class Sandbox:
    """HOME, ORCH_DB_PATH's folder and the working directory, all empty temp dirs."""

    home: Path
    orch_dir: Path
    cwd: Path
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    @property
    def orch_db(self) -> Path:
        return self.orch_dir / "orchestrator.db"

    @property
    def default_db(self) -> Path:
        return self.home / ".openclaw" / "data" / "orchestrator.db"

    def files(self) -> list[str]:
        return sorted(str(p) for d in (self.home, self.orch_dir, self.cwd) for p in d.rglob("*"))

    def run(self, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        full = dict(self.env)
        for name, value in env.items():
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        return subprocess.run([EXE, *args], env=full, cwd=self.cwd, capture_output=True, text=True, timeout=60)

    def main(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The same command in this process (``leasestore.cli.main``): quicker."""
        from leasestore.cli import main

        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Sandbox:
    home, orch_dir, cwd = tmp_path / "home", tmp_path / "orch", tmp_path / "cwd"
    for d in (home, orch_dir, cwd):
        d.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEASESTORE_", "METRICS_THRESHOLD_")) or k.startswith("LEASESTORE_TEST_")}
    env.update(HOME=str(home), ORCH_DB_PATH=str(orch_dir / "orchestrator.db"))
    # The library reads the same environment in this process.
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ORCH_DB_PATH", str(orch_dir / "orchestrator.db"))
    monkeypatch.delenv("LEASESTORE_DATABASE_URL", raising=False)
    monkeypatch.chdir(cwd)
    return Sandbox(home, orch_dir, cwd, env, monkeypatch, capsys)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1, done
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


EMPTY_DB_COMMANDS = [
    ["init-db", "--db", ""],
    ["init-db", "--db", "   "],
    ["status", "--db", ""],
    ["--db", "", "status"],
    ["--db", "", "init-db"],
    ["enqueue", "q", "--db", ""],
    ["claim", "q", "--owner", "a", "--db", ""],
    ["events", "--db", ""],
    ["metrics", "--db", ""],
    ["dead-letters", "list", "--db", ""],
]
# These would start processes or a server if the check were missing: run as the
# installed console script, bounded by a timeout.
EMPTY_DB_SUBPROCESS_COMMANDS = [
    ["init-db", "--db", ""],
    ["--db", "", "status"],
    ["demo", "--workers", "1", "--tasks", "1", "--db", ""],
    ["exporter", "--port", "0", "--db", ""],
    ["phase3", "concurrency", "--workers", "1", "--tasks", "1", "--iterations", "1", "--max-seconds", "5",
     "--report-dir", "out-phase3", "--db", ""],
]


def _ids(args: list[str]) -> str:
    return " ".join(repr(x) if not x.strip() else x for x in args)


@pytest.mark.parametrize("args", EMPTY_DB_COMMANDS, ids=_ids)
def test_cli_empty_db_flag_is_refused(sandbox: Sandbox, args: list[str]) -> None:
    """``--db ''`` (as a script passing ``--db "$UNSET"`` would) never reaches the default store."""
    done = sandbox.main(*args)
    assert_one_line_error(done, "--db is empty")
    assert sandbox.files() == []


@pytest.mark.parametrize("args", EMPTY_DB_SUBPROCESS_COMMANDS, ids=_ids)
def test_console_script_empty_db_flag_is_refused(sandbox: Sandbox, args: list[str]) -> None:
    done = sandbox.run(*args)
    assert_one_line_error(done, "--db is empty")
    assert sandbox.files() == []


@pytest.mark.parametrize("name, value", [
    ("LEASESTORE_DATABASE_URL", ""),
    ("LEASESTORE_DATABASE_URL", " \t"),
    ("ORCH_DB_PATH", ""),
    ("ORCH_DB_PATH", "  "),
])
@pytest.mark.parametrize("command", [["init-db"], ["status"], ["enqueue", "q"]])
def test_cli_empty_environment_variable_is_refused(sandbox: Sandbox, name: str, value: str,
                                                   command: list[str]) -> None:
    done = sandbox.main(*command, **{name: value})
    assert_one_line_error(done, f"{name} is set but empty")
    assert sandbox.files() == []


@pytest.mark.parametrize("name", ["LEASESTORE_DATABASE_URL", "ORCH_DB_PATH"])
def test_console_script_empty_environment_variable_is_refused(sandbox: Sandbox, name: str) -> None:
    done = sandbox.run("init-db", **{name: ""})
    assert_one_line_error(done, f"{name} is set but empty")
    assert sandbox.files() == []


def test_cli_unset_variables_still_mean_the_default(sandbox: Sandbox) -> None:
    """Unset (not empty) variables keep their meaning: ORCH_DB_PATH, else the default file under HOME."""
    done = sandbox.run("init-db")
    assert done.returncode == 0, done
    assert sandbox.orch_db.exists() and not sandbox.default_db.exists()
    done = sandbox.run("init-db", ORCH_DB_PATH=None)
    assert done.returncode == 0, done
    assert sandbox.default_db.exists()
    assert sandbox.run("status", ORCH_DB_PATH=None).returncode == 0


@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_library_empty_url_is_refused(sandbox: Sandbox, value: str) -> None:
    with pytest.raises(ConfigurationError, match="database URL is empty"):
        resolve_database_url(value)
    with pytest.raises(ConfigurationError, match="database URL is empty"):
        LeaseStore(value)
    with pytest.raises(ConfigurationError, match="database URL is empty"):
        LeaseStore(value, init=False)
    with pytest.raises(ConfigurationError, match="database URL is empty"):
        AsyncLeaseStore(value)
    assert sandbox.files() == []


@pytest.mark.parametrize("name", ["LEASESTORE_DATABASE_URL", "ORCH_DB_PATH"])
@pytest.mark.parametrize("value", ["", "   "])
def test_library_empty_environment_variable_is_refused(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch,
                                                       name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=f"{name} is set but empty"):
        resolve_database_url()
    with pytest.raises(ConfigurationError, match=f"{name} is set but empty"):
        LeaseStore()
    with pytest.raises(ConfigurationError, match=f"{name} is set but empty"):
        AsyncLeaseStore()
    assert sandbox.files() == []


def test_library_unset_variables_still_mean_the_default(sandbox: Sandbox) -> None:
    assert resolve_database_url(env={}).database == str(DEFAULT_DB_PATH.expanduser())
    assert resolve_database_url(env={}).database == str(sandbox.default_db)
    assert resolve_database_url(env={"ORCH_DB_PATH": "/x/y.db"}).database == "/x/y.db"
    assert resolve_database_url("/a.db", env={"LEASESTORE_DATABASE_URL": ""}).database == "/a.db"


# --- 2a. a folder that cannot be created --------------------------------------------------------

def test_cli_uncreatable_folder_is_a_typed_one_line_error(tmp_path: Path) -> None:
    path = "/proc/nonexistent/x.db"
    done = subprocess.run([EXE, "init-db", "--db", path], capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = subprocess.run([EXE, "init-db", "--db", str(blocker / "x.db")], capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(done, str(blocker / "x.db"))
    done = subprocess.run([EXE, "init-db", "--db", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert_one_line_error(done, str(tmp_path))


def test_library_uncreatable_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="/proc/nonexistent/x.db"):
        LeaseStore("/proc/nonexistent/x.db")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigurationError, match="a-file"):
        LeaseStore(str(blocker / "x.db"))


# --- 2b. a store on a read-only filesystem -----------------------------------------------------

def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@dataclass
class ReadOnlyStore:
    folder: Path
    path: str
    lease: dict[str, Any]  # a lease held when the filesystem became read-only
    dead_letter_id: int
    digest: str  # every file of the folder, name and bytes
    bind: bool  # a read-only bind mount (no tmpfs)

    def current_digest(self) -> str:
        return folder_digest(self.folder)


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


FILL = """
import json, sys
from leasestore import LeaseStore
with LeaseStore(sys.argv[1]) as store:
    store.enqueue_many("q", [{"n": i} for i in range(3)], task_ids=[f"t{i}" for i in range(3)])
    store.enqueue("q", None, task_id="doomed", max_attempts=1)
    doomed = store.claim_task(task_id="doomed", owner="x")
    store.release_task(doomed.lease, "failed", "boom")
    held = store.claim_task(task_id="t2", owner="agent-a", ttl=3600).lease
    lease = {"task_id": held.task_id, "token": held.token, "fence": held.fencing_token}
    print(json.dumps({"lease": lease, "dead_letter_id": store.list_dead_letters()[0].id}))
"""


def _fill(path: str) -> tuple[dict[str, Any], int]:
    # In a process of its own: a live store keeps its write-lock file open for
    # writing, and Linux refuses to remount a filesystem read-only under it.
    done = subprocess.run([sys.executable, "-c", FILL, path], capture_output=True, text=True, timeout=60,
                          check=True)
    filled = json.loads(done.stdout)
    return filled["lease"], filled["dead_letter_id"]


@pytest.fixture
def ro_store() -> Iterator[ReadOnlyStore]:
    """A store on a filesystem remounted read-only (a tmpfs, else a read-only bind mount)."""
    require(os.geteuid() == 0, "root, to mount a read-only filesystem")
    folder = Path(tempfile.mkdtemp(prefix="leasestore-rofs-"))
    bind = False
    mounted = _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(folder))
    if not mounted:
        mounted = bind = _mount("--bind", str(folder), str(folder))
    try:
        require(mounted, "mount (a tmpfs or a bind mount), to make a read-only filesystem")
        path = str(folder / "store.db")
        lease, dead_letter_id = _fill(path)
        assert sorted(p.name for p in folder.iterdir()) == ["store.db", "store.db.lock"]
        digest = folder_digest(folder)
        assert _mount("-o", "remount,bind,ro" if bind else "remount,ro", str(folder))
        assert os.statvfs(folder).f_flag & os.ST_RDONLY
        yield ReadOnlyStore(folder, path, lease, dead_letter_id, digest, bind)
    finally:
        if mounted and subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


READS = [
    ["status"],
    ["status", "--json"],
    ["events"],
    ["events", "--task-id", "t0", "--json"],
    ["dead-letters", "list"],
    ["dead-letters", "list", "--json"],
    ["metrics", "--no-record"],
]


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_read_only_filesystem_reads_work(ro_store: ReadOnlyStore, args: list[str]) -> None:
    done = cli(*args, "--db", ro_store.path)
    assert done.returncode == 0, done
    assert done.stderr == ""
    if "--json" in args:
        json.loads(done.stdout)
    if args[0] == "events" and "--json" in args:
        assert [e["kind"] for e in json.loads(done.stdout)] == ["enqueued"]
    if args[0] == "status" and "--json" in args:
        counts = {(c["status"], c["count"]) for c in json.loads(done.stdout)["counts"]}
        assert counts == {("pending", 2), ("leased", 1), ("dead", 1)}
    assert ro_store.current_digest() == ro_store.digest


@pytest.mark.parametrize("as_json", [False, True])
def test_read_only_filesystem_metrics_print_everything_and_a_note(ro_store: ReadOnlyStore, as_json: bool) -> None:
    """metrics cannot record its alerts rows: a note says so, every metric and METRICS_ALERT still print."""
    done = cli("metrics", "60", "--db", ro_store.path, *(["--json"] if as_json else []))
    assert done.returncode == 0, done
    assert done.stderr.startswith("note: ") and done.stderr.count("\n") == 1, done.stderr
    assert "read-only" in done.stderr and "alerts" in done.stderr
    if as_json:
        report = json.loads(done.stdout)
        assert {m["metric"] for m in report["metrics"]} == {m.key for m in METRICS}
        assert report["METRICS_ALERT"] == 1
    else:
        for metric in METRICS:
            assert metric.key in done.stdout
        assert done.stdout.rstrip().splitlines()[-1] == "METRICS_ALERT=1"
    assert ro_store.current_digest() == ro_store.digest


WRITES: list[tuple[str, Any]] = [
    ("init-db", lambda s: ["init-db"]),
    ("enqueue", lambda s: ["enqueue", "q", "--id", "new"]),
    ("enqueue-existing", lambda s: ["enqueue", "q", "--id", "t0"]),
    ("claim-next", lambda s: ["claim", "q", "--owner", "b", "--additional"]),
    ("claim-task", lambda s: ["claim", "--task-id", "t0", "--owner", "b"]),
    ("claim-empty-queue", lambda s: ["claim", "nothing-here", "--owner", "b"]),
    ("claim-resume", lambda s: ["claim", "q", "--owner", "agent-a"]),
    ("heartbeat", lambda s: ["heartbeat", s.lease["task_id"], "--token", s.lease["token"],
                             "--fence", str(s.lease["fence"])]),
    ("release", lambda s: ["release", s.lease["task_id"], "--token", s.lease["token"],
                           "--fence", str(s.lease["fence"])]),
    ("recover", lambda s: ["recover"]),
    ("revoke", lambda s: ["revoke", s.lease["task_id"]]),
    ("requeue", lambda s: ["dead-letters", "requeue", str(s.dead_letter_id)]),
    ("resolve", lambda s: ["dead-letters", "resolve", str(s.dead_letter_id)]),
]


@pytest.mark.parametrize("make_args", [w[1] for w in WRITES], ids=[w[0] for w in WRITES])
def test_read_only_filesystem_writes_are_refused(ro_store: ReadOnlyStore, make_args: Any) -> None:
    done = cli(*make_args(ro_store), "--db", ro_store.path)
    assert_one_line_error(done, "error: database is read-only: ", ro_store.path)
    assert ro_store.current_digest() == ro_store.digest


def _library_writes(store: Any, lease: dict[str, Any], dead_letter_id: int) -> dict[str, Any]:
    from leasestore.types import LeaseRef

    ref = LeaseRef(lease["task_id"], lease["token"], lease["fence"])
    return {
        "init_db": lambda: store.init_db(),
        "enqueue": lambda: store.enqueue("q", None, task_id="new"),
        "claim": lambda: store.claim_task("q", "b", additional=True),
        "claim_empty_queue": lambda: store.claim_task("nothing-here", "b"),
        "heartbeat": lambda: store.heartbeat(ref),
        "release": lambda: store.release_task(ref, "done"),
        "recover": lambda: store.recover_stale(),
        "revoke": lambda: store.revoke_lease(lease["task_id"]),
        "requeue": lambda: store.requeue_dead_letter(dead_letter_id),
        "resolve": lambda: store.resolve_dead_letter(dead_letter_id),
    }


def test_read_only_filesystem_library(ro_store: ReadOnlyStore) -> None:
    """The blocking face opens with its defaults (init=True), reads, and refuses every write."""
    with LeaseStore(ro_store.path) as store:
        assert store.get_task("t0").status == "pending"
        assert {t.id for t in store.list_tasks(queue="q")} == {"t0", "t1", "t2", "doomed"}
        assert store.status_summary()["leases"][0]["owner"] == "agent-a"
        assert store.events(task_id="t1")[0]["kind"] == "enqueued"
        assert [d.task_id for d in store.list_dead_letters()] == ["doomed"]
        report = compute_metrics(store, 60)
        assert report.alert
        refused = {}
        for name, write in {**_library_writes(store, ro_store.lease, ro_store.dead_letter_id),
                            "record_alerts": lambda: record_alerts(store, report)}.items():
            with pytest.raises(StoreReadOnly) as caught:
                write()
            refused[name] = str(caught.value)
        assert all(m.startswith("database is read-only: ") for m in refused.values()), refused
        assert store.get_task("t0").status == "pending"  # still readable after the refusals
    assert ro_store.current_digest() == ro_store.digest


def test_read_only_filesystem_async_library(ro_store: ReadOnlyStore) -> None:
    async def main() -> dict[str, str]:
        async with AsyncLeaseStore(ro_store.path) as store:
            assert (await store.get_task("t0")).status == "pending"
            assert len(await store.list_tasks()) == 4
            assert (await store.status_summary())["counts"]
            refused = {}
            for name, write in _library_writes(store, ro_store.lease, ro_store.dead_letter_id).items():
                with pytest.raises(StoreReadOnly) as caught:
                    await write()
                refused[name] = str(caught.value)
            return refused

    refused = asyncio.run(main())
    assert all(m.startswith("database is read-only: ") for m in refused.values()), refused
    assert ro_store.current_digest() == ro_store.digest


def test_read_only_then_writable_again(ro_store: ReadOnlyStore) -> None:
    """A long-lived store whose filesystem comes back read-write writes again, without reopening it."""
    with LeaseStore(ro_store.path) as store:
        assert store.get_task("t0").status == "pending"
        with pytest.raises(StoreReadOnly):
            store.enqueue("q", None, task_id="new")
        assert _mount("-o", "remount,bind,rw" if ro_store.bind else "remount,rw", str(ro_store.folder))
        assert store.enqueue("q", None, task_id="new").created
        assert store.claim_task(task_id="new", owner="b").lease is not None


def test_read_only_bind_mount_follows_a_live_writer(tmp_path: Path) -> None:
    """A reader on a read-only view of a folder another process writes through sees every commit.

    With no write-ahead log on disk the reader opens the file immutable; the
    moment a writer appears (a -wal file, a changed file) it reopens normally,
    so it never keeps reading a stale copy.
    """
    require(os.geteuid() == 0, "root, to make a read-only bind mount")
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    writer_store = LeaseStore(str(rw / "store.db"))
    writer_store.enqueue("q", None, task_id="first")
    writer_store.close()
    mounted = _mount("--bind", str(rw), str(ro))
    try:
        require(mounted, "mount --bind")
        assert _mount("-o", "remount,bind,ro", str(ro))
        assert not (rw / "store.db-wal").exists()
        with LeaseStore(str(ro / "store.db")) as reader:
            assert [t.id for t in reader.list_tasks()] == ["first"]  # immutable: no -wal file
            # A writer comes and goes between two reads: the file changed, the reader reopens.
            writer = LeaseStore(str(rw / "store.db"))
            writer.enqueue("q", None, task_id="second")
            writer.close()  # the last connection checkpoints and removes the -wal file
            assert not (rw / "store.db-wal").exists()
            assert sorted(t.id for t in reader.list_tasks()) == ["first", "second"]
            # A writer that stays: the reader shares its -wal and -shm files and sees each commit.
            writer = LeaseStore(str(rw / "store.db"))
            writer.enqueue("q", None, task_id="third")
            assert (rw / "store.db-wal").exists()
            assert sorted(t.id for t in reader.list_tasks()) == ["first", "second", "third"]
            with pytest.raises(StoreReadOnly, match="database is read-only: "):
                reader.enqueue("q", None, task_id="from-reader")
            with pytest.raises(StoreReadOnly, match="database is read-only: "):
                reader.claim_task("nothing-here", "b")
            writer.enqueue("q", None, task_id="fourth")
            assert sorted(t.id for t in reader.list_tasks()) == ["first", "fourth", "second", "third"]
            writer.close()
        with sqlite3.connect(str(rw / "store.db")) as check:
            assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert check.execute("SELECT COUNT(*) FROM tasks WHERE id = 'from-reader'").fetchone()[0] == 0
    finally:
        if mounted and subprocess.run(["umount", str(ro)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_store_without_write_permission_reads_and_refuses_writes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Another user (no write permission on the folder or the file, a writable filesystem): reads work,
    every write is one ``database is read-only`` line, nothing changes."""
    require(os.geteuid() == 0, "root, to run the command as another user")
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv")
    assert setpriv is not None
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", EXE]
    # pytest's tmp_path is private to root: first, a store nobody may not even reach.
    hidden = str(tmp_path / "hidden.db")
    for args in (["status"], ["init-db"], ["enqueue", "q"]):
        done = subprocess.run([*nobody, *args, "--db", hidden], capture_output=True, text=True, timeout=60)
        assert_one_line_error(done, f"cannot open the database {hidden}: Permission denied")
    folder = Path(tempfile.mkdtemp(prefix="leasestore-noperm-"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    folder.chmod(0o755)
    path = str(folder / "store.db")
    lease, _ = _fill(path)
    os.chmod(path, 0o444)
    digest = folder_digest(folder)
    for args in (["status", "--json"], ["events", "--task-id", "t2"], ["metrics", "--no-record"]):
        done = subprocess.run([*nobody, *args, "--db", path], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stderr == "", done
    for args in (["enqueue", "q", "--id", "new"], ["claim", "nothing-here", "--owner", "b"], ["recover"],
                 ["heartbeat", lease["task_id"], "--token", lease["token"], "--fence", str(lease["fence"])]):
        done = subprocess.run([*nobody, *args, "--db", path], capture_output=True, text=True, timeout=60)
        assert_one_line_error(done, "error: database is read-only: ", path)
    assert folder_digest(folder) == digest
