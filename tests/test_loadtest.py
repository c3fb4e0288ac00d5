"""Phase-3 load runs, small: locust in real processes on both backends.

Each run enqueues a few dozen tasks, lets two locust worker processes work
through them, drains the rest and checks the invariants; the report must carry
the numbers and the verdict must follow the database.

Figures come from the measured window only (issue 10, item 7): these runs are
far too short for a rate, and must say so rather than print one; a run made
long enough (with the minimums lowered for speed) gives a rate and percentiles
that are exactly those of the calls inside its window.
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
from loadtest import names, phase3, report
from loadtest.report import Call, LocustStats, OperationStats, Window, measure_window, percentile, read_calls

SMALL = {"workers": 2, "tasks": 30, "iterations": 15}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200, highlight=False)


def assert_report_holds_the_numbers(summary: dict[str, Any], report_dir: Path, *, measured: bool = False) -> None:
    assert summary["verdict"] == "PASS", summary
    assert summary["claims"] == summary["workers"] * summary["iterations"]
    assert summary["releases"] > 0
    window = summary["window"]
    assert window["agents"] == summary["workers"] and 0 <= window["seconds"] <= summary["duration_seconds"]
    assert window["cycles"] <= summary["releases"]
    if measured:
        assert window["measurable"] and summary["too_short_to_measure"] is None
        assert summary["throughput_cycles_per_second"] == pytest.approx(window["cycles"] / window["seconds"])
    else:  # too short: no rate, no percentiles, and the reason and a way out
        assert not window["measurable"] and summary["throughput_cycles_per_second"] is None
        assert "a rate needs at least" in summary["too_short_to_measure"]
        assert summary["suggestion"].startswith("--iterations ")
    for op in ("claim", "heartbeat", "release"):
        stats = summary["operations"][op]
        assert stats["requests"] > 0 and 0 <= stats["in_window"] <= stats["requests"]
        if measured:
            assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"]
        else:
            assert stats["p50"] is stats["p95"] is stats["p99"] is stats["average"] is None
    work = summary["work"]
    assert work["load"]["finished"] + work["drain"]["finished"] == summary["tasks"] and work["left"] == 0
    assert work["load"]["done"] <= summary["requests"].get(names.RELEASE_DONE, 0)
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
    # 2 agents x 15 claims cannot finish 30 tasks that fail a fifth of the time: the drain did
    # the rest, and a window of a few milliseconds gives no rate
    assert "work: the load run finished " in output and "the final drain finished " in output
    assert "too short to measure: " in output and "cycles/s" not in output
    summary = json.loads((report_dir / "summary.json").read_text())
    assert_report_holds_the_numbers(summary, report_dir)
    assert summary["work"]["drain"]["finished"] > 0
    assert summary["requests"].get(names.CLAIM_BUSY, 0) == 0  # claim-next never meets a held task


def test_a_long_enough_run_is_measured_in_its_window(sqlite_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate and percentiles are those of the calls inside the window, which
    leaves out the start-up, the tail and the drain."""
    monkeypatch.setattr(report, "MIN_WINDOW_SECONDS", 0.2)
    monkeypatch.setattr(report, "MIN_WINDOW_CYCLES", 20)
    result = phase3.run_concurrency(workers=2, tasks=200, iterations=60, fail_rate=0.0, work_ms=2,
                                    report_dir=tmp_path, db_url=sqlite_url, console=quiet())
    summary = result.as_dict()
    assert_report_holds_the_numbers(summary, tmp_path, measured=True)
    agents = read_calls(tmp_path / "samples")
    assert len(agents) == 2 and sum(len(a) for a in agents) == 2 * 60 * 3
    window = measure_window(agents)
    assert summary["window"]["cycles"] == window.cycles == sum(
        1 for a in agents for c in a if c.cycle and window.holds(c))
    starts = [min(c.start for c in a) for a in agents]
    assert window.start == max(starts) > min(starts) - 1  # from the last agent's first call
    for op in ("claim", "release"):
        inside = sorted(c.ms for a in agents for c in a if c.operation == op and window.holds(c))
        assert summary["operations"][op]["in_window"] == len(inside)
        assert summary["operations"][op]["p95"] == percentile(inside, 95)
    assert result.stats.throughput == pytest.approx(window.cycles / window.seconds)
    # the drain's work is not in the figures
    assert summary["work"]["drain"]["finished"] == 200 - summary["work"]["load"]["finished"]


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


def test_regression_rounds_share_one_store(tmp_path: Path, capsys) -> None:
    """Rounds too short to measure are not compared: INCONCLUSIVE, exit 5, one JSON document."""
    code = cli.main(["phase3", "regression", "--rounds=2", "--workers=2", "--tasks=30", "--iterations=10",
                     "--failRate=0.3", "--tolerance=100", f"--report-dir={tmp_path}", "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == phase3.EXIT_INCONCLUSIVE == 5 and captured.err == "", captured.err
    assert result["verdict"] == "INCONCLUSIVE" and result["regressions"] == []
    assert [line.split(":")[0] for line in result["unmeasured"]] == ["round 1", "round 2"]
    assert all(r["verdict"] == "PASS" and r["throughput_cycles_per_second"] is None for r in result["rounds"])
    assert len({r["queue"] for r in result["rounds"]}) == 2
    assert (tmp_path / "store.db").exists() and not (tmp_path / "round-1" / "store.db").exists()
    assert (tmp_path / "round-2" / "locust_stats.csv").exists()
    for r in result["rounds"]:  # each round's metrics window holds only its own rows
        retries = {m["metric"]: m["value"] for m in r["metrics"]["metrics"]}["retryAttempts"]
        assert retries <= r["requests"].get(names.RELEASE_FAILED, 0)


def _stats(throughput: float | None, p95: float) -> LocustStats:
    """Stats whose measured window gives ``throughput`` (None: too short)."""
    cycles = 1000 if throughput is None else int(throughput)
    seconds = 0.01 if throughput is None else 1.0
    stats = LocustStats(duration=1.0, window=Window(0.0, seconds, 2, cycles, 3 * cycles))
    stats.requests[names.RELEASE_DONE] = cycles
    measured = throughput is not None
    for op in ("claim", "release"):
        stats.operations[op] = OperationStats(op, 100, 0, 100, *((p95 / 2, p95, p95, p95 / 2) if measured
                                                                  else (None, None, None, None)))
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


def test_rounds_too_short_are_not_compared() -> None:
    """A short round, however slow it looks, is no regression, and no pass either."""
    for rounds in ([_stats(1000, 1.0), _stats(None, 1.0)], [_stats(None, 1.0), _stats(150, 500.0)]):
        assert phase3.compare_rounds(rounds, 0.0) == []
        unmeasured = phase3.unmeasured_rounds(rounds)
        assert len(unmeasured) == 1 and "too short to measure" in unmeasured[0]
    assert _stats(None, 1.0).throughput is None and _stats(1000, 1.0).throughput == 1000


def calls(start: float, count: int, step: float, name: str = names.RELEASE_DONE) -> list[Call]:
    """An agent's ``count`` claim → release pairs, one every ``step`` seconds from
    ``start``; each call lasts a fifth of a step."""
    out = []
    for i in range(count):
        t = start + i * step
        out.append(Call("claim", names.CLAIM if name != names.CLAIM_NO_TASK else name, t, step * 200))
        if name != names.CLAIM_NO_TASK:
            out.append(Call("release", name, t + step / 2, step * 200))
    return out


def test_the_window_is_when_every_agent_runs() -> None:
    """From the last agent's first call to the first agent's last call."""
    early, late = calls(100.0, 1000, 0.01), calls(102.0, 1000, 0.01)  # 100-110 s and 102-112 s
    window = measure_window([early, late])
    assert window.start == 102.0 and window.end == pytest.approx(109.997)
    assert window.agents == 2 and window.measurable and window.seconds == pytest.approx(7.997)
    assert window.cycles == 800 + 800  # early's releases from 102 s on, late's before 110 s
    assert LocustStats(window=window).throughput == pytest.approx(1600 / 7.997)
    # a failed release is no cycle
    failed = [Call("release", "release", 105.0, 1.0, ok=False)]
    assert measure_window([early + failed, late]).cycles == window.cycles


def test_the_window_ends_with_the_work() -> None:
    """Agents spinning on an empty queue after the last release are not load."""
    spinning = calls(3.0, 200, 0.01, names.CLAIM_NO_TASK)  # 3-5 s
    window = measure_window([calls(0.0, 300, 0.01) + spinning, calls(0.0, 290, 0.01) + spinning])
    assert window.end == pytest.approx(2.997) and window.cycles == 590


@pytest.mark.parametrize(("agents", "reason"), [
    ([], "no agent made a call"),
    ([calls(0.0, 500, 0.001)], "500 cycles in 0.50 s"),  # enough cycles, not enough time
    ([calls(0.0, 50, 0.1)], "50 cycles in 4.97 s"),  # enough time, not enough cycles
    ([calls(0.0, 1000, 0.001), calls(0.9, 1000, 0.001)], "with all 2 agents running"),  # barely overlap
])
def test_a_window_too_short_says_why(agents: list[list[Call]], reason: str) -> None:
    window = measure_window(agents)
    assert not window.measurable and reason in (window.too_short or "")
    stats = LocustStats(window=window)
    assert stats.throughput is None


def test_bad_parameters_are_one_line_errors(tmp_path: Path, capsys) -> None:
    code = cli.main(["phase3", "concurrency", "--failRate=1.5", f"--reportDir={tmp_path}"])
    assert code == 1
    assert capsys.readouterr().err.strip().startswith("error: failRate")
