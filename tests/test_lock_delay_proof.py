"""Lock-delay, proven with real processes: a paused holder's late side effects.

Every agent here holds its task through ``store.lease()`` and appends an
unfenced side effect to a file every 5 ms until ``job.lost`` tells it the lease
is gone (``chaos_worker.effects``). Each round, the test stops the task's holder
with SIGSTOP for longer than its TTL, so another agent takes the task over, and
then lets it go on: it keeps writing until its next heartbeat is refused.

* ``lock_delay`` 0: the new holder starts as soon as the lease expires, while
  the old one is still stopped; the old one's late effects land after the new
  one's first: overlaps.
* ``lock_delay`` at least the time from expiry to the old holder noticing
  (the pause past the TTL, plus a heartbeat interval, plus a round trip): the
  old holder's last effect always precedes the new holder's first, over at
  least 50 pauses per backend (both faces).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chaos import Figures, Worker, start_together
from test_faults import assert_history_clean, backend_of

from leasestore import NO_BACKOFF, LeaseStore
from leasestore.models import TaskStatus

TTL = 0.4  # the holders heartbeat every TTL / 3
PAUSE = 0.6  # SIGSTOP this long: 0.2 s past the TTL
# Expiry to the old holder's last effect is at most PAUSE - TTL + TTL / 3
# (0.33 s) plus the refused heartbeat's round trip; 0.8 s leaves room for a
# loaded machine.
SAFE_LOCK_DELAY = 0.8
PAIRS = 3  # per face and lock-delay: two agents racing for one queue
ROUNDS = 10  # per pair: 3 pairs x 10 rounds x 2 faces = 60 pauses per lock-delay (a few are
# stopped before their first effect and not counted)


@dataclass
class Pair:
    queue: str
    lock_delay: float
    face: str
    agents: dict[str, Worker] = field(default_factory=dict)
    paused: list[tuple[str, int, float, float]] = field(default_factory=list)  # task, fence, stopped, resumed
    errors: list[str] = field(default_factory=list)
    unheld: int = 0  # rounds whose task was done before its holder could be stopped


def _run_rounds(store: LeaseStore, pair: Pair, rng: random.Random) -> None:
    """Enqueue a task, find its holder, stop it past its TTL, wait until the task is done."""
    try:
        for n in range(3 * ROUNDS):
            if len(pair.paused) == ROUNDS:
                return
            task_id = store.enqueue(pair.queue, {"round": n}, task_id=f"{pair.queue}-{n}").task_id
            found = _wait_until(lambda: _holder(store, task_id), 20, f"{task_id} leased")
            if found == DONE:
                pair.unheld += 1
                continue  # claimed and finished between two looks (a starved test thread): no pause
            holder, fence = found
            time.sleep(rng.uniform(0.03, 0.12))  # somewhere inside its work
            agent = pair.agents[holder]
            agent.signal(signal.SIGSTOP)
            stopped = time.time()
            # A starved test thread may have seen the lease late, and its holder
            # finished the task before the stop: a stopped idle agent is no pause.
            held = _holder(store, task_id) == found
            time.sleep(PAUSE if held else 0)
            agent.signal(signal.SIGCONT)
            if held:
                pair.paused.append((task_id, fence, stopped, time.time()))
            else:
                pair.unheld += 1
            _wait_until(lambda: store.get_task(task_id).status == TaskStatus.DONE or None, 30, f"{task_id} done")
        raise AssertionError(f"{len(pair.paused)} of {ROUNDS} rounds paused a holder")
    except Exception as exc:  # surfaced by the test, with the pair it came from
        pair.errors.append(f"{pair.queue}: {type(exc).__name__}: {exc}")


DONE = ("", 0)


def _holder(store: LeaseStore, task_id: str) -> tuple[str, int] | None:
    task = store.get_task(task_id)
    if task.status == TaskStatus.DONE:
        return DONE
    if task.status != TaskStatus.LEASED or task.owner is None:
        return None
    return task.owner, task.fencing_token


def _wait_until(look: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = look()
        if found:
            return found
        time.sleep(0.005)
    raise AssertionError(f"not {what} within {timeout} s")


@dataclass
class Handover:
    """One task passed from a paused holder (fence ``old``) to the next (``new``)."""

    task_id: str
    old_last: float  # the old holder's last side effect
    new_first: float  # the new holder's first
    resumed: float  # when the old holder was let go on
    noticed: float | None  # when the old holder saw job.lost (None: its release was refused instead)

    @property
    def overlap(self) -> bool:
        return self.old_last >= self.new_first


def handovers(effects: Path, paused: list[tuple[str, int, float, float]]) -> list[Handover]:
    """For each paused task whose holder had begun its side effects: that
    holder's last effect and the next fence's first."""
    by_fence: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    noticed: dict[tuple[str, int], float] = {}
    for line in effects.read_text().splitlines():
        at, event, _owner, task_id, fence = line.split()
        if event == "effect":
            by_fence[task_id][int(fence)].append(float(at))
        else:
            noticed[(task_id, int(fence))] = float(at)
    found = []
    for task_id, old, stopped, resumed in paused:
        fences = by_fence[task_id]
        if not fences[old] or min(fences[old]) >= stopped:
            continue  # stopped before its first effect: nothing of it to overlap
        later = [f for f in fences if f > old]
        assert later, f"{task_id}: nobody took over from fence {old}"
        new = min(later)
        found.append(Handover(task_id, max(fences[old]), min(fences[new]), resumed, noticed.get((task_id, old))))
    return found


@pytest.mark.slow
def test_lock_delay_keeps_a_paused_holders_late_effects_before_the_next_holders(
        db_url: str, tmp_path: Path) -> None:
    store = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    started = time.monotonic()
    pairs = [Pair(f"{face}-{'safe' if delay else 'zero'}-{i}", delay, face)
             for face in ("sync", "async") for delay in (0.0, SAFE_LOCK_DELAY) for i in range(PAIRS)]
    effects = tmp_path / "effects.log"
    go = tmp_path / "go"  # the rounds start once every agent is up (starting 24 takes a while)
    for pair in pairs:
        store.set_queue_settings(pair.queue, lock_delay=pair.lock_delay)
        for side in ("a", "b"):
            owner = f"{pair.queue}-{side}"
            pair.agents[owner] = Worker("effects", db_url, owner, tmp_path, face=pair.face, queue=pair.queue,
                                        ttl=TTL, effects=effects, work=0.2, poll=0.05, deadline=180, go=go)
    rng = random.Random(11)
    drivers = [threading.Thread(target=_run_rounds, args=(store, pair, random.Random(rng.random())))
               for pair in pairs]
    try:
        start_together([a for pair in pairs for a in pair.agents.values()], go, timeout=120)
        for t in drivers:
            t.start()
        for t in drivers:
            t.join(timeout=180)
    finally:
        for pair in pairs:
            for agent in pair.agents.values():
                if agent.proc.exitcode is None:
                    agent.signal(signal.SIGCONT)
                agent.kill()
    try:
        _check(store, db_url, pairs, drivers, effects, started)
    finally:
        store.close()


def _check(store: LeaseStore, db_url: str, pairs: list[Pair], drivers: list[threading.Thread],
           effects: Path, started: float) -> None:
    backend = backend_of(db_url)
    assert not [t for t in drivers if t.is_alive()], "a round did not end"
    crashed = {owner: a.proc.exitcode for p in pairs for owner, a in p.agents.items() if a.proc.exitcode not in (None, -9)}
    assert not crashed, crashed
    assert [e for pair in pairs for e in pair.errors] == []
    report = assert_history_clean(store, db_url)  # lock_delay invariant included

    figures: dict[str, Any] = {}
    for delay in (0.0, SAFE_LOCK_DELAY):
        found = [h for pair in pairs if pair.lock_delay == delay for h in handovers(effects, pair.paused)]
        late = [h.old_last - h.resumed for h in found]
        gaps = [h.new_first - h.old_last for h in found]
        noticing = [h.noticed - h.resumed for h in found if h.noticed is not None]
        figures[f"lock_delay_{delay:g}"] = {
            "pauses": len(found), "overlaps": sum(h.overlap for h in found),
            "late_effects_after_resume_max_s": round(max(late), 3),
            "resume_to_noticed_max_s": round(max(noticing), 3) if noticing else None,
            "old_last_to_new_first_min_s": round(min(gaps), 3)}
    Figures("lock_delay_sigstop", backend, tasks=sum(len(p.paused) for p in pairs), workers=2 * len(pairs),
            faults=sum(len(p.paused) for p in pairs), lost=len(report.unfinished), violations=len(report.violations),
            drain_seconds=time.monotonic() - started,
            extra={"ttl_s": TTL, "pause_s": PAUSE, "rounds_not_counted": sum(p.unheld for p in pairs),
                   **figures}).report()

    zero, safe = figures["lock_delay_0"], figures[f"lock_delay_{SAFE_LOCK_DELAY:g}"]
    assert zero["pauses"] >= 50 and safe["pauses"] >= 50
    # Without the delay the next holder starts while the old one is stopped,
    # and the old one's writes after it wakes land in the middle of its work.
    # (whether a given pause overlaps depends on which of the woken holder's
    # threads runs first: its worker, or its heartbeat that learns of the loss)
    assert zero["overlaps"] > 0, figures
    # The old holder did write after waking (the delay had something to cover)...
    assert safe["late_effects_after_resume_max_s"] > 0, figures
    # ...and every one of those writes came before the next holder's first.
    assert safe["overlaps"] == 0, figures
