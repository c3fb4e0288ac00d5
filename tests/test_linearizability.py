"""Client-observed histories of real concurrent processes, checked for
linearizability against a model of the lease (see ``linearizability.py``),
beside the server-log checker (``leasestore.history``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from leasestore import LeaseStore
from leasestore.history import check_history
from tests.linearizability import Call, linearizable

WORKER = Path(__file__).resolve().parent / "lin_worker.py"
HOT = ["hot-0", "hot-1", "hot-2"]


def run_clients(url: str, face: str, tmp: Path, clients: int, seconds: float) -> list[Call]:
    start_at = time.time() + 2.0  # every client starts at once, however long it took to import
    procs = []
    for i in range(clients):
        args = {"url": url, "face": face, "owner": f"c{i}", "tasks": HOT, "seconds": seconds, "seed": i,
                "out": str(tmp / f"c{i}.json"), "start_at": start_at}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], stderr=subprocess.PIPE,
                                      text=True))
    calls: list[Call] = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=seconds + 60)
        assert proc.returncode == 0, err[-2000:]
        result = json.loads((tmp / f"c{i}.json").read_text())
        assert result["errors"] == []
        calls += [Call.from_json(c) for c in result["calls"]]
    return calls


@pytest.mark.slow
def test_hot_tasks_linearize(db_url: str, face: str, tmp_path: Path) -> None:
    """8 client processes claim and release 3 hot tasks by name for 3 s: every
    answer they saw (acquired with fence + 1, busy naming the holder, release
    accepted) fits one order of the calls; no claim of a ready task answers noTask."""
    with LeaseStore(db_url) as store:
        store.enqueue_many("lin", [None] * len(HOT), task_ids=HOT, max_attempts=1000)
    calls = run_clients(db_url, face, tmp_path, clients=8, seconds=3.0)
    per_task: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        per_task[call.task].append(call)
    assert set(per_task) == set(HOT)
    no_task = [c for c in calls if c.answer == ("noTask",)]
    assert no_task == [], f"{len(no_task)} claims of a ready task answered noTask, e.g. {no_task[:2]}"
    for task, history in per_task.items():
        ok, why = linearizable(history)
        assert ok, f"{task}: {why}"
    acquired = sum(1 for c in calls if c.answer[0] == "acquired")
    busy = sum(1 for c in calls if c.answer[0] == "busy")
    print(f"\n{len(calls)} calls, {acquired} acquisitions, {busy} busy")
    assert acquired > 30 and busy > 10  # the run did race
    with LeaseStore(db_url, init=False) as store:
        report = check_history(store, require_drained=False)
        assert report.ok, report.summary()


def test_the_checker_rejects_what_the_model_forbids() -> None:
    """Not vacuous: a reused fence, a busy naming the wrong holder, a noTask for a
    ready task and two overlapping holders are each caught."""
    def c(client: str, op: str, invoke: float, ret: float, *answer: object, fence: int | None = None) -> Call:
        return Call(client, op, "t", invoke, ret, tuple(answer), fence)

    good = [c("a", "claim", 0, 1, "acquired", 1), c("b", "claim", 2, 3, "busy", "a"),
            c("a", "release", 4, 5, "ok", fence=1), c("b", "claim", 6, 7, "acquired", 2)]
    assert linearizable(good)[0]
    # Concurrent calls may take effect in either order.
    assert linearizable([c("a", "claim", 0, 5, "acquired", 1), c("b", "claim", 1, 2, "busy", "a")])[0]
    for bad in (
        [c("a", "claim", 0, 1, "acquired", 1), c("a", "release", 2, 3, "ok", fence=1),
         c("b", "claim", 4, 5, "acquired", 1)],
        [c("a", "claim", 0, 1, "acquired", 1), c("b", "claim", 2, 3, "busy", "c")],
        [c("a", "claim", 0, 1, "noTask")],
        [c("a", "claim", 0, 1, "acquired", 1), c("b", "claim", 2, 3, "acquired", 2)],
        # b's busy came back before a's claim was even sent: no order explains it.
        [c("b", "claim", 0, 1, "busy", "a"), c("a", "claim", 2, 3, "acquired", 1)],
    ):
        assert not linearizable(bad)[0], bad
