"""CLI output people can use (issue 10, items 6 and 8; issue 12, item 3).

* Ids, timestamps and owners are never cut, at 80 and 100 columns as at 250.
* ``--json`` on every command that prints a result: one JSON document on stdout.
* Enum options list their choices in ``--help`` and refuse others in one line.
* Long operations show progress on a terminal and nothing when piped.
* ``leasestore clock`` and ``clock --reset`` on both backends.
* ``leasestore exporter`` forwards ``--web.config.file``.
* Onboarding: the services check, the Makefile's messages, the license form.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main

from leasestore import LeaseStore
from leasestore import cli
from tests.conftest import require_binary
from leasestore.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("leasestore"))
TASK_ID = "0123456789abcdef0123456789abcdef"  # 32 characters, like a uuid4().hex
OWNER = "agent-with-a-rather-long-identity@build-host-42.eu-west-1.example.org"
OTHER_TASK = "fedcba9876543210fedcba9876543210"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\r\x08]")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_json(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> Any:
    got, out, err = run(capsys, *args, "--json")
    assert got == code, (args, out, err)
    return json.loads(out)  # the whole of stdout is one document


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", **extra)
    return env


def seed_long_names(db: str) -> None:
    """A 32-character task id held by a long owner, and one dead-lettered by it."""
    with LeaseStore(db) as store:
        store.enqueue("q", {"n": 1}, task_id=TASK_ID)
        store.enqueue("q", {"n": 2}, task_id=OTHER_TASK, max_attempts=1)
        doomed = store.claim_task(None, OWNER, task_id=OTHER_TASK, ttl=60).lease
        assert doomed is not None
        store.release_task(doomed, "failed", "a long error message " * 8)
        assert store.claim_task(None, OWNER, task_id=TASK_ID, ttl=60).lease is not None


def lines_with(text: str, value: str) -> list[str]:
    return [line for line in text.splitlines() if value in line]


# --- nothing is cut -----------------------------------------------------------------------------

@pytest.mark.parametrize("columns", [80, 100])
def test_ids_timestamps_and_owners_are_whole_at_80_and_100_columns(
        db_url: str, columns: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """events, status and dead-letters list print every id, timestamp and owner
    whole on one line (a table when it fits, else one block per row), in this
    process and through the installed script."""
    seed_long_names(db_url)
    monkeypatch.setenv("COLUMNS", str(columns))
    timestamps = [e["ts"] for e in one_json(capsys, "events", "--db", db_url)]
    stamps = {cli._ts(ts) for ts in timestamps}
    for command, values in ((["events"], [TASK_ID, OTHER_TASK, OWNER, *stamps]),
                            (["status"], [TASK_ID, OWNER]),
                            (["dead-letters", "list"], [OTHER_TASK])):
        code, out, err = run(capsys, *command, "--db", db_url)
        assert code == 0 and err == "", err
        script = subprocess.run([EXE, *command, "--db", db_url], capture_output=True, text=True,
                                env=child_env(COLUMNS=str(columns)), check=True).stdout
        for text in (out, script):
            assert "…" not in text and "..." not in text, text
            assert max(len(line) for line in text.splitlines()) <= columns, text
            for value in values:
                assert lines_with(text, value), (command, value, text)
                # copyable: the value stands between separators, not glued to a fold
                assert any(re.search(rf"(^|[\s:│]){re.escape(value)}($|[\s│])", line)
                           for line in lines_with(text, value)), (value, text)


def test_a_wide_terminal_gets_a_table(sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seed_long_names(sqlite_url)
    monkeypatch.setenv("COLUMNS", "300")
    _, out, _ = run(capsys, "events", "--db", sqlite_url)
    header = next(line for line in out.splitlines() if "owner" in line)
    assert "┃" in header and "task" in header
    assert any(TASK_ID in line and OWNER in line for line in out.splitlines())


def test_data_is_never_read_as_markup(sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with LeaseStore(sqlite_url) as store:
        store.enqueue("q", None, task_id="t[bold]x[/bold]")
        lease = store.claim_task("q", "[red]owner[/red]").lease
        assert lease is not None
    for columns in ("80", "300"):
        monkeypatch.setenv("COLUMNS", columns)
        _, out, _ = run(capsys, "events", "--db", sqlite_url)
        assert "t[bold]x[/bold]" in out and "[red]owner[/red]" in out
        _, out, _ = run(capsys, "status", "--db", sqlite_url)
        assert "t[bold]x[/bold]" in out and "[red]owner[/red]" in out


# --- --json everywhere ------------------------------------------------------------------------

def result_commands() -> list[str]:
    """Every command path of the CLI, except the exporter (a server, not a result)."""
    found = []

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
        else:
            found.append(" ".join(path))

    walk(typer.main.get_command(cli.app), [])
    return sorted(c for c in found if c != "exporter")


def test_every_command_that_prints_a_result_takes_json() -> None:
    commands = result_commands()
    assert {"revoke", "dead-letters requeue", "dead-letters resolve", "phase3 concurrency",
            "phase3 regression", "clock", "init-db", "demo"} <= set(commands)
    group = typer.main.get_command(cli.app)
    for path in commands:
        command: Any = group
        for name in path.split():
            command = command.commands[name]
        assert any("--json" in p.opts for p in command.params), path


def test_json_output_of_every_store_command(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each is one parseable document on stdout with nothing on stderr."""
    db = ["--db", db_url]
    assert one_json(capsys, "init-db", *db)["schema_version"] >= 1
    task = one_json(capsys, "enqueue", "q", "--id", TASK_ID, "--max-attempts", "1", *db)
    lease = one_json(capsys, "claim", "q", "--owner", OWNER, "--ttl", "60", *db)
    assert lease["task_id"] == task["task_id"] == TASK_ID and lease["owner"] == OWNER
    assert one_json(capsys, "heartbeat", TASK_ID, "--token", lease["token"], "--fence", "1", *db)["fencing_token"] == 1
    assert one_json(capsys, "revoke", TASK_ID, "--reason", "operator", *db) == {
        "task_id": TASK_ID, "revoked": True, "reason": "operator"}
    again = one_json(capsys, "claim", "q", "--owner", OWNER, *db)
    released = one_json(capsys, "release", TASK_ID, "--token", again["token"], "--fence", "2",
                        "--outcome", "FAILED", "--error", "boom", *db)
    assert released["result"] == "dead_lettered"
    letters = one_json(capsys, "dead-letters", "list", "--status", "open", *db)
    assert [d["task_id"] for d in letters] == [TASK_ID]
    assert one_json(capsys, "dead-letters", "requeue", str(letters[0]["id"]), *db) == {
        "dead_letter_id": letters[0]["id"], "task_id": TASK_ID, "status": "requeued"}
    third = one_json(capsys, "claim", "q", "--owner", OWNER, *db)
    one_json(capsys, "release", TASK_ID, "--token", third["token"], "--fence", "3", "--outcome", "failed", *db)
    second = one_json(capsys, "dead-letters", "list", *db)[0]
    assert one_json(capsys, "dead-letters", "resolve", str(second["id"]), "--note", "won't fix", *db) == {
        "dead_letter_id": second["id"], "task_id": TASK_ID, "status": "resolved", "note": "won't fix"}
    assert one_json(capsys, "dead-letters", "list", "--status", "resolved", *db)[0]["id"] == second["id"]
    assert one_json(capsys, "recover", *db)["scanned"] == 0
    assert one_json(capsys, "status", *db)["counts"] == [{"queue": "q", "status": "dead", "count": 1}]
    assert len(one_json(capsys, "events", *db)) >= 8
    assert one_json(capsys, "metrics", "60", "--no-record", *db)["METRICS_ALERT"] in (0, 1)
    assert one_json(capsys, "clock", *db)["refused"] is False


def test_demo_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = one_json(capsys, "demo", "--workers", "2", "--tasks", "6", "--db", str(tmp_path / "demo.db"))
    assert result["ok"] and result["counts"].get("done", 0) + result["counts"].get("dead", 0) == 6
    assert result["killed_agent"].startswith("agent-") and result["metrics"]["metrics"]


# --- choices ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "option", "choices"), [
    (["release", "t", "--token", "x", "--fence", "1"], "--outcome", ["done", "failed"]),
    (["dead-letters", "list"], "--status", ["open", "requeued", "resolved"]),
    (["phase3", "concurrency"], "--scenario", ["drain", "hot", "stall"]),
])
def test_enum_options_list_their_choices_and_refuse_others(
        sqlite_url: str, capsys: pytest.CaptureFixture[str], command: list[str], option: str,
        choices: list[str]) -> None:
    code, out, _ = run(capsys, *command[:2 if command[0] != "release" else 1], "--help")
    assert code == 0 and f"<{'|'.join(choices)}>" in out, out
    code, out, err = run(capsys, *command, option, "maybe", "--db", sqlite_url)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: Invalid value for '{option}': 'maybe' is not one of ")
    assert all(f"'{c}'" in err for c in choices) and "Value error" not in err


def test_the_scenario_choices_are_the_load_tests_scenarios() -> None:
    from loadtest import names

    assert [s.value for s in cli.Scenario] == list(names.SCENARIOS)


# --- progress: on a terminal, not when piped ------------------------------------------------

def in_terminal(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; everything it wrote, escape codes removed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(10)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def expired_backlog(db: str, count: int) -> None:
    with LeaseStore(db) as store:
        store.enqueue_many("q", [{"n": i} for i in range(count)])
        for _ in range(count):
            assert store.claim_task("q", "gone", ttl=0.1, additional=True).lease is not None
    time.sleep(0.2)


def test_recover_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    piped_db, tty_db = str(tmp_path / "piped.db"), str(tmp_path / "tty.db")
    expired_backlog(piped_db, 300)
    expired_backlog(tty_db, 300)
    piped = subprocess.run([EXE, "recover", "--batch-size", "20", "--db", piped_db], capture_output=True,
                           text=True, env=child_env())
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout == "scanned=300 recovered=300 dead_lettered=0 skipped=0 failed=0 failure_ratio=0\n"
    code, seen = in_terminal([EXE, "recover", "--batch-size", "20", "--db", tty_db], child_env())
    assert code == 0 and "recovering expired leases" in seen and "batch " in seen, seen
    assert "scanned=300 recovered=300" in seen


def test_recover_stops_at_max_batches_and_says_so(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    expired_backlog(sqlite_url, 30)
    code, out, _ = run(capsys, "recover", "--batch-size", "10", "--max-batches", "2", "--db", sqlite_url)
    assert code == 0 and out.startswith("scanned=20 recovered=20") and "stopped after 2 batches" in out
    assert one_json(capsys, "recover", "--batch-size", "10", "--db", sqlite_url)["recovered"] == 10


def test_phase3_progress_on_a_terminal_and_json_when_piped(tmp_path: Path) -> None:
    args = [EXE, "phase3", "concurrency", "--workers=1", "--tasks=5", "--iterations=3"]
    piped = subprocess.run([*args, f"--report-dir={tmp_path / 'piped'}", "--json"], capture_output=True, text=True,
                           env=child_env(), timeout=180)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    summary = json.loads(piped.stdout)
    assert summary["verdict"] == "PASS" and summary["throughput_cycles_per_second"] is None
    code, seen = in_terminal([*args, f"--report-dir={tmp_path / 'tty'}"], child_env(COLUMNS="120"))
    assert code == 0 and "load run, drain: 1 agents" in seen and "verdict: PASS" in seen, seen


# --- leasestore clock -------------------------------------------------------------------------

def test_clock_on_sqlite_shows_refusal_and_resets(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A process whose clock ran an hour ahead wrote last: this process is refused
    until `clock --reset`, which prints the store's time as it was."""
    assert run(capsys, "init-db", "--db", sqlite_url)[0] == 0
    with LeaseStore(sqlite_url, clock_offset=3600) as ahead:
        ahead.enqueue("q", None, task_id="t1")
    status = one_json(capsys, "clock", "--db", sqlite_url)
    assert status["backend"] == "sqlite" and status["refused"] is True
    assert 3590 < status["behind_seconds"] < 3610 and status["tolerance_seconds"] == 5.0
    assert 3590 < status["store_time"] - status["now"] < 3610
    code, out, err = run(capsys, "clock", "--db", sqlite_url)
    assert code == 0 and "behind by 3" in out and "REFUSED (ClockBehind)" in out and "clock --reset" in out
    code, _, err = run(capsys, "enqueue", "q", "--db", sqlite_url)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1

    code, out, err = run(capsys, "clock", "--reset", "--db", sqlite_url)
    assert code == 0 and err == ""
    before = time.time() + 3600
    was = re.search(r"the store's time was (\S+ \S+)Z", out)
    assert was is not None and abs(time.mktime(time.strptime(was[1][:19], "%Y-%m-%d %H:%M:%S"))
                                   - time.timezone - before) < 60, out
    assert out.rstrip().endswith("writes                accepted")
    assert run(capsys, "enqueue", "q", "--db", sqlite_url)[0] == 0
    assert one_json(capsys, "clock", "--db", sqlite_url)["refused"] is False

    with LeaseStore(sqlite_url, clock_offset=3600) as ahead:
        ahead.enqueue("q", None, task_id="t2")
    reset = one_json(capsys, "clock", "--reset", "--db", sqlite_url)
    assert reset["reset"] is True and reset["before"]["refused"] is True and reset["after"]["refused"] is False
    assert 3590 < reset["before"]["store_time"] - reset["after"]["store_time"] < 3610


def test_clock_on_postgresql_is_one_server_clock(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init-db", "--db", pg_url)[0] == 0
    status = one_json(capsys, "clock", "--db", pg_url)
    assert status["backend"] == "postgresql" and status["store_time"] is None and status["refused"] is False
    assert status["clock"] == "PostgreSQL: one server clock" and abs(status["now"] - time.time()) < 60
    code, out, _ = run(capsys, "clock", "--db", pg_url)
    assert code == 0 and out.startswith("PostgreSQL: one server clock: ")
    code, out, _ = run(capsys, "clock", "--reset", "--db", pg_url)
    assert code == 0 and "nothing to reset (PostgreSQL: one server clock)" in out
    assert one_json(capsys, "clock", "--reset", "--db", pg_url)["reset"] is False


# --- exporter ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--web.config.file", "--web-config-file"])
def test_exporter_forwards_the_web_config_file(flag: str, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from exporter import server

    seen: list[list[str]] = []
    monkeypatch.setattr(server, "main", lambda argv: seen.append(list(argv)) or 0)
    web = str(tmp_path / "-web.yml")  # a value that looks like a flag stays a value
    assert run(capsys, "exporter", flag, web, "--port", "0", "--db", "x.db")[0] == 0
    args = server.parse_args(seen[0])
    assert args.web_config_file == web and args.port == 0 and args.db == "x.db" and args.tls_cert is None


def test_exporter_reports_a_missing_web_config_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([EXE, "exporter", "--web.config.file", str(tmp_path / "nope.yml"), "--port", "0",
                           "--db", str(tmp_path / "s.db")], capture_output=True, text=True, env=child_env(),
                          timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "nope.yml" in done.stderr and "Traceback" not in done.stderr


# --- onboarding ------------------------------------------------------------------------------

ITEMS = ("PostgreSQL", "prometheus", "promtool", "alertmanager", "amtool", "openssl")


def test_services_check_lists_each_item_and_never_fails(tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "head", "sed", "cut", "id"):
        found = shutil.which(tool)
        assert found is not None
        (bare / tool).symlink_to(found)
    env = {"PATH": str(bare), "LEASESTORE_TEST_PG_DSN": "postgresql://postgres@127.0.0.1:1/test"}
    done = subprocess.run([str(bare / "sh"), str(ROOT / "scripts/check_services.sh"), sys.executable],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for item in ITEMS:
        line = next(line for line in lines if line.split()[1:2] == [item])
        assert line.split()[0] == "MISSING", line
    assert "apt-get install -y prometheus-alertmanager" in done.stdout
    here = subprocess.run(["sh", str(ROOT / "scripts/check_services.sh"), sys.executable], capture_output=True,
                          text=True, timeout=60)
    assert here.returncode == 0 and all(any(line.split()[1:2] == [item] for line in here.stdout.splitlines())
                                        for item in ITEMS)


def test_makefile_says_what_it_does() -> None:
    # Under `make test` this runs inside make: no "Entering directory" lines.
    make = [require_binary("make"), "--no-print-directory"]
    demo = subprocess.run([*make, "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    steps = demo.splitlines()
    venv = next(i for i, s in enumerate(steps) if "-m venv" in s)
    pip = next(i for i, s in enumerate(steps) if "pip install" in s and "-e" in s)
    assert steps[venv - 1].startswith("echo") and steps[pip - 1].startswith("echo")
    assert any(s.startswith("echo") and "demo" in s for s in steps[pip:])
    test = subprocess.run([*make, "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert test.splitlines()[0].startswith("sh scripts/check_services.sh")
    assert re.search(r"pytest -q -n 2 --dist loadgroup --durations=\d+", test)


def test_pyproject_uses_the_spdx_license_form() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    requires = project["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires)
