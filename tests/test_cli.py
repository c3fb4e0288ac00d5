"""The ``leasestore`` command end to end, on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leasestore import LeaseStore
from leasestore.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_full_task_life_through_the_cli(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """init-db, enqueue, claim, heartbeat with checkpoint, fail, reclaim, release done, events, status."""
    assert run(capsys, "init-db", "--db", db_url)[0] == 0
    assert run(capsys, "init-db", "--db", db_url)[0] == 0  # idempotent
    task = run_json(capsys, "enqueue", "jobs", "--payload", '{"n": 1}', "--dedupe-key", "k", "--db", db_url)
    again = run_json(capsys, "enqueue", "jobs", "--payload", '{"n": 1}', "--dedupe-key", "k", "--db", db_url)
    assert task["created"] and not again["created"] and again["task_id"] == task["task_id"]

    lease = run_json(capsys, "claim", "jobs", "--owner", "a", "--ttl", "30", "--db", db_url)
    assert lease["status"] == "acquired" and lease["fencing_token"] == 1 and lease["payload"] == {"n": 1}
    hb = run_json(capsys, "heartbeat", lease["task_id"], "--token", lease["token"], "--fence", "1",
                  "--checkpoint", '{"step": 2}', "--db", db_url)
    assert hb["expires_at"] >= lease["expires_at"]
    failed = run_json(capsys, "release", lease["task_id"], "--token", lease["token"], "--fence", "1",
                      "--outcome", "failed", "--error", "boom", "--retry-in", "0", "--db", db_url)
    assert failed["result"] == "retry_scheduled"

    second = run_json(capsys, "claim", "jobs", "--owner", "b", "--db", db_url)
    assert second["fencing_token"] == 2 and second["checkpoint"] == {"step": 2} and second["attempt"] == 2
    # the first holder's token is stale now
    code, _, err = run(capsys, "release", lease["task_id"], "--token", lease["token"], "--fence", "1", "--db", db_url)
    assert code == 1 and err.startswith("error: lease on task") and "\n" == err[-1] and err.count("\n") == 1
    done = run_json(capsys, "release", second["task_id"], "--token", second["token"], "--fence", "2", "--db", db_url)
    assert done["result"] == "done"

    kinds = [e["kind"] for e in run_json(capsys, "events", "--task-id", task["task_id"], "--db", db_url)]
    assert kinds == ["enqueued", "claimed", "checkpointed", "retry_scheduled", "claimed", "released"]
    status = run_json(capsys, "status", "--db", db_url)
    assert status["counts"] == [{"queue": "jobs", "status": "done", "count": 1}]
    code, out, _ = run(capsys, "status", "--db", db_url)
    assert code == 0 and "jobs" in out


def test_claim_exit_codes_for_busy_and_no_task(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """claim exits 0 when leased, 3 when busy, 4 when nothing is available."""
    run(capsys, "init-db", "--db", db_url)
    run(capsys, "enqueue", "q", "--id", "t1", "--db", db_url)
    assert run(capsys, "claim", "q", "--owner", "a", "--db", db_url)[0] == 0
    code, out, _ = run(capsys, "claim", "--task-id", "t1", "--owner", "b", "--db", db_url)
    assert code == 3 and "busy" in out and "held by a" in out
    assert run(capsys, "claim", "q", "--owner", "b", "--db", db_url)[0] == 4


def test_queue_settings_and_a_lock_delayed_claim(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """queue set/show, enqueue taking the settings, exit 5 while a lock-delay holds a task."""
    run(capsys, "init-db", "--db", db_url)
    settings = run_json(capsys, "queue", "set", "q", "--lock-delay", "30", "--max-attempts", "4",
                        "--lease-ttl", "0.2", "--db", db_url)
    assert (settings["lock_delay"], settings["max_attempts"], settings["lease_ttl"]) == (30, 4, 0.2)
    cleared = run_json(capsys, "queue", "set", "q", "--max-attempts", "default", "--db", db_url)
    assert cleared["max_attempts"] is None and cleared["lock_delay"] == 30
    assert run_json(capsys, "queue", "show", "q", "--db", db_url) == cleared
    assert [s["queue"] for s in run_json(capsys, "queue", "show", "--db", db_url)] == ["q"]
    code, out, _ = run(capsys, "queue", "show", "--db", db_url)
    assert code == 0 and "queue settings" in out and "30" in out

    run(capsys, "enqueue", "q", "--id", "t1", "--db", db_url)
    store = LeaseStore(db_url, init=False)
    assert (store.get_task("t1").lock_delay, store.get_task("t1").max_attempts) == (30, 3)
    first = run_json(capsys, "claim", "q", "--owner", "a", "--db", db_url)  # the queue's 0.2 s TTL
    assert first["expires_at"] - store.now() < 1
    store.clock.offset += 1
    assert store.recover_stale().recovered == 1
    code, out, _ = run(capsys, "claim", "q", "--owner", "b", "--db", db_url)
    assert code == 5 and out.startswith("lockDelayed t1 until ")
    held = json.loads(run(capsys, "claim", "--task-id", "t1", "--owner", "b", "--db", db_url, "--json")[1])
    assert held["status"] == "lockDelayed" and held["held_until"] == pytest.approx(first["expires_at"] + 30)
    store.close()
    status = run_json(capsys, "status", "--db", db_url)
    assert [s["queue"] for s in status["queue_settings"]] == ["q"]
    code, out, _ = run(capsys, "status", "--db", db_url)
    assert "queue settings" in out


def test_dead_letters_and_metrics(db_url: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A task past its retry limit is listed, requeued once, and the metrics alert on it."""
    run(capsys, "init-db", "--db", db_url)
    run(capsys, "enqueue", "q", "--id", "t1", "--max-attempts", "1", "--db", db_url)
    lease = run_json(capsys, "claim", "q", "--owner", "a", "--db", db_url)
    released = run_json(capsys, "release", "t1", "--token", lease["token"], "--fence", "1",
                        "--outcome", "failed", "--error", "bad", "--db", db_url)
    assert released["result"] == "dead_lettered"
    letters = json.loads(run(capsys, "dead-letters", "list", "--json", "--db", db_url)[1])
    assert [(d["task_id"], d["reason"]) for d in letters] == [("t1", "retry_limit")]

    monkeypatch.setenv("METRICS_THRESHOLD_DEAD_LETTERS_OPEN", "1")
    code, out, _ = run(capsys, "metrics", "60", "--db", db_url)
    assert code == 0 and out.rstrip().endswith("METRICS_ALERT=1")
    report = run_json(capsys, "metrics", "60", "--no-record", "--db", db_url)
    by_name = {m["metric"]: m for m in report["metrics"]}
    assert by_name["deadLettersOpen"] == {"metric": "deadLettersOpen", "gauge": "leasestore_dead_letters_open",
                                          "value": 1.0, "threshold": 1.0, "alert": True}
    assert by_name["retryLimitReached"]["value"] == 1.0 and report["METRICS_ALERT"] == 1

    code, out, _ = run(capsys, "dead-letters", "requeue", str(letters[0]["id"]), "--db", db_url)
    assert code == 0 and "requeued t1" in out
    code, _, err = run(capsys, "dead-letters", "requeue", str(letters[0]["id"]), "--db", db_url)
    assert code == 1 and "no open dead letter" in err
    monkeypatch.delenv("METRICS_THRESHOLD_DEAD_LETTERS_OPEN")
    code, out, _ = run(capsys, "metrics", "60", "--db", db_url)
    # retryLimitReached (1 >= 1) still alerts for the window
    assert out.rstrip().endswith("METRICS_ALERT=1")
    store = LeaseStore(db_url, init=False)
    assert store.get_task("t1").status == "pending"
    store.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["enqueue", "q", "--payload", "{nope"], "payload is not valid JSON"),
        (["claim", "q", "--owner", ""], "owner must not be empty"),
        (["claim", "q", "--owner", "a", "--ttl", "-1"], "ttl must be between"),
        (["claim", "q", "--owner", "a", "--ttl", "nan"], "ttl must be between"),
        (["heartbeat", "missing", "--token", "x", "--fence", "1"], "task 'missing' not found"),
        (["metrics", "0"], "window must be between"),
        (["dead-letters", "resolve", "99"], "no open dead letter with id 99"),
        (["enqueue", "q", "--lock-delay", "-1"], "lock_delay must be between"),
        (["enqueue", "q", "--max-attempts", "0"], "max_attempts must be between"),
        (["queue", "set", "q"], "no setting to change"),
        (["queue", "set", "q", "--lock-delay", ""], "--lock-delay is empty"),
        (["queue", "set", "q", "--lock-delay", "soon"], "--lock-delay must be a number of seconds"),
        (["queue", "set", "q", "--max-attempts", "2.5"], "--max-attempts must be a whole number"),
        (["queue", "set", "q", "--lease-ttl", "0"], "lease_ttl must be between"),
        (["queue", "set", "q", "--retry-base", "-3"], "retry_base must be between"),
        (["queue", "set", " ", "--lock-delay", "1"], "queue must not be empty"),
        (["queue", "show", ""], "queue must not be empty"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(db_url: str, capsys: pytest.CaptureFixture[str],
                                                   args: list[str], message: str) -> None:
    """Every refusal is one stderr line, exit 1, and no row changes."""
    run(capsys, "init-db", "--db", db_url)
    store = LeaseStore(db_url, init=False)
    before = _row_counts(store)
    code, out, err = run(capsys, *args, "--db", db_url)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert _row_counts(store) == before
    store.close()


def test_missing_schema_and_bad_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store without schema says to run init-db; a bad URL is a one-line configuration error."""
    code, _, err = run(capsys, "status", "--db", str(tmp_path / "empty.db"))
    assert code == 1 and "run `leasestore init-db`" in err
    code, _, err = run(capsys, "status", "--db", "mysql://u@h/db")
    assert code == 1 and "unsupported database" in err
    code, _, err = run(capsys, "status", "--db", "postgresql+psycopg://u:secret@[bad")
    assert code == 1 and "secret" not in err and err.count("\n") == 1


def test_installed_script_uses_orch_db_path(tmp_path: Path) -> None:
    """The console script honours ORCH_DB_PATH, creating directories, and ends metrics with METRICS_ALERT."""
    db = tmp_path / "nested" / "dir" / "orchestrator.db"
    env = dict(os.environ, ORCH_DB_PATH=str(db))
    exe = Path(sys.executable).with_name("leasestore")
    subprocess.run([str(exe), "init-db"], env=env, check=True, capture_output=True)
    assert db.exists()
    done = subprocess.run([str(exe), "metrics", "60"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.rstrip().splitlines()[-1] == "METRICS_ALERT=0"
    bad = subprocess.run([str(exe), "claim", "q", "--owner", " "], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: owner must not be empty"


def _row_counts(store: LeaseStore) -> tuple[int, ...]:
    tables = ("tasks", "event_log", "lock_events", "dead_letters", "alerts", "queue_settings")

    return tuple(int(store.database.query(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables)
