"""Phase-3 load runs, small: locust in real processes on both backends.

Each run enqueues a few dozen tasks, lets two locust worker processes work
through them, drains the rest and checks the invariants; the report must carry
the numbers and the verdict must follow the database.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from leasestore import LeaseStore, cli
from leasestore.metrics import METRICS
from loadtest import names, phase3
from loadtest.report import LocustStats, OperationStats

SMALL = {"workers": 2, "tasks": 30, "iterations": 15}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200, highlight=False)


def assert_report_holds_the_numbers(summary: dict[str, Any], report_dir: Path) -> None:
    assert summary["verdict"] == "PASS", summary
    assert summary["claims"] == SMALL["workers"] * SMALL["iterations"]
    assert summary["releases"] > 0
    assert summary["throughput_cycles_per_second"] > 0
    for op in ("claim", "heartbeat", "release"):
        stats = summary["operations"][op]
        assert stats["requests"] > 0
        assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"]
    assert 0 <= summary["busy_ratio"] <= 1 and 0 <= summary["no_task_ratio"] <= 1
    assert [m["metric"] for m in summary["metrics"]["metrics"]] == [m.key for m in METRICS]
    assert summary["invariants"]["ok"] and summary["crosscheck"] == [] and summary["problems"] == []
    assert "done" in summary["invariants"]["summary"]
    stats_csv = (report_dir / "locust_stats.csv").read_text()
    for name in (names.CLAIM, names.HEARTBEAT, names.RELEASE_DONE):
        assert f",{name}," in stats_csv
    assert "claim" in (report_dir / "locust.html").read_text()


def test_concurrency_command_drains_one_queue(db_url: str, tmp_path: Path, capsys) -> None:
    report_dir = tmp_path / "report"
    code = cli.main(["phase3", "concurrency", "--workers=2", "--tasks=30", "--iterations=15",
                     "--failRate=0.2", f"--reportDir={report_dir}", f"--db={db_url}"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "verdict: PASS" in output and "lockConflictEvents" in output and "p95" in output
    summary = json.loads((report_dir / "summary.json").read_text())
    assert_report_holds_the_numbers(summary, report_dir)
    assert summary["requests"].get(names.CLAIM_BUSY, 0) == 0  # claim-next never meets a held task


def test_hot_task_ids_drive_lock_conflicts(db_url: str, tmp_path: Path) -> None:
    # One hot id held 50 ms a step: the agents' runs overlap even when one
    # process starts late on a loaded machine, so claims must collide.
    result = phase3.run_concurrency(**SMALL, fail_rate=0.1, scenario="hot", hot_tasks=1, work_ms=50,
                                    report_dir=tmp_path, db_url=db_url, console=quiet())
    summary = result.as_dict()
    assert_report_holds_the_numbers(summary, tmp_path)
    busy = result.stats.requests[names.CLAIM_BUSY]
    assert busy > 0 and summary["busy_ratio"] == busy / result.stats.claims
    # Nothing else wrote to this store during the run: the metric is locust's count.
    assert result.metrics["lockConflictEvents"].value == busy


def test_stalled_agents_leave_work_for_recovery(db_url: str, tmp_path: Path) -> None:
    result = phase3.run_concurrency(**SMALL, fail_rate=0.1, ttl=1.0, scenario="stall", stall_rate=0.3,
                                    report_dir=tmp_path, db_url=db_url, console=quiet())
    assert_report_holds_the_numbers(result.as_dict(), tmp_path)
    # Abandoned leases expired and were recovered or taken over, by agents or the drain.
    assert result.metrics["lockExpired"].value >= 1
    assert result.history.terminal["done"] + result.history.terminal["dead"] == SMALL["tasks"]


def forge_claim_on_a_done_task(store: LeaseStore, queue: str) -> None:
    """Append a claim row for a finished task with a reused fencing token: the
    log now says a done task was leased again (the triggers allow INSERT)."""
    task_id, fence = store.database.query(
        "SELECT id, fencing_token FROM tasks WHERE queue = :queue AND status = 'done' ORDER BY id LIMIT 1",
        {"queue": queue})[0]
    store.database.query("INSERT INTO event_log (ts, task_id, queue, kind, from_status, to_status, owner, "
                         "fencing_token, attempt) VALUES (:now, :id, :queue, 'claimed', 'pending', 'leased', "
                         "'forger', :fence, 1) RETURNING id",
                         {"now": store.now(), "id": task_id, "queue": queue, "fence": fence})


def test_a_broken_invariant_makes_the_command_exit_non_zero(sqlite_url: str, tmp_path: Path,
                                                            monkeypatch, capsys) -> None:
    real_check = phase3.check_run

    def corrupt_then_check(store: LeaseStore, queue: str) -> Any:
        forge_claim_on_a_done_task(store, queue)
        return real_check(store, queue)

    monkeypatch.setattr(phase3, "check_run", corrupt_then_check)
    code = cli.main(["phase3", "concurrency", "--workers=1", "--tasks=10", "--iterations=5",
                     f"--report-dir={tmp_path}", f"--db={sqlite_url}"])
    assert code == 1
    assert "verdict: FAIL" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "FAIL" and not summary["invariants"]["ok"]
    assert any(v.startswith(("[terminal_once]", "[fencing_monotonic]", "[single_holder]"))
               for v in summary["invariants"]["violations"]), summary["invariants"]


def test_regression_rounds_share_one_store(tmp_path: Path) -> None:
    result = phase3.run_regression(rounds=2, workers=2, tasks=30, iterations=10, fail_rate=0.3,
                                   report_dir=tmp_path, tolerance=100.0, console=quiet())
    assert result.ok, [r.as_dict() for r in result.rounds]
    assert len({r.store_url for r in result.rounds}) == 1
    assert len({r.queue for r in result.rounds}) == 2
    assert (tmp_path / "round-2" / "locust_stats.csv").exists()
    for r in result.rounds:  # each round's metrics window holds only its own rows
        assert r.metrics["retryAttempts"].value <= r.stats.requests[names.RELEASE_FAILED]


def _stats(throughput: float, p95: float) -> LocustStats:
    stats = LocustStats(duration=1.0)
    stats.requests[names.RELEASE_DONE] = int(throughput)
    for op in ("claim", "release"):
        stats.operations[op] = OperationStats(op, 100, 0, p95 / 2, p95, p95, p95 / 2)
    return stats


@pytest.mark.parametrize(("later", "regressed"), [
    (_stats(900, 1.0), False),  # noise
    (_stats(400, 1.0), True),  # throughput below 1000 / 2
    (_stats(1000, 30.0), True),  # p95 far above 2x and the noise floor
    (_stats(1000, 4.0), False),  # 4x, but under the noise floor
])
def test_regression_tolerance(later: LocustStats, regressed: bool) -> None:
    found = phase3.compare_rounds([_stats(1000, 1.0), later], phase3.DEFAULT_TOLERANCE)
    assert bool(found) is regressed, found


def test_bad_parameters_are_one_line_errors(tmp_path: Path, capsys) -> None:
    code = cli.main(["phase3", "concurrency", "--failRate=1.5", f"--reportDir={tmp_path}"])
    assert code == 1
    assert capsys.readouterr().err.strip().startswith("error: failRate")
