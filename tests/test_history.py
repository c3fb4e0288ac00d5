"""The history checker: hand-made broken logs each invariant must catch, and real logs it must pass."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from leasestore import NO_BACKOFF, LeaseStore
from leasestore.history import (
    EVENT_PER_CHANGE,
    FENCING_MONOTONIC,
    LOCK_DELAY,
    METRICS_MATCH_LOG,
    NOT_DRAINED,
    PRIORITY_ORDER,
    RESULT_ONCE,
    SINGLE_HOLDER,
    TERMINAL_ONCE,
    HistoryReport,
    check_events,
    check_history,
    check_metrics,
    compare_metrics,
    recount_metrics,
)
from leasestore.metrics import compute_metrics


class Log:
    """Builds event_log rows the way the store writes them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, task: str, kind: str, frm: str | None, to: str, *, owner: str | None = None,
            fence: int | None = None, ts: float | None = None, detail: dict[str, Any] | None = None) -> int:
        eid = len(self.rows) + 1
        if ts is None:  # the store's time moves forward with the log
            ts = max([float(eid)] + [r["ts"] for r in self.rows])
        self.rows.append({"id": eid, "ts": ts, "task_id": task, "queue": "q",
                          "kind": kind, "from_status": frm, "to_status": to, "owner": owner,
                          "fencing_token": fence, "attempt": None, "reason": None,
                          "detail": json.dumps(detail) if detail else None})
        return eid

    def enqueue(self, task: str, **kw: Any) -> int:
        return self.add(task, "enqueued", None, "pending", **kw)

    def claim(self, task: str, owner: str, fence: int, **kw: Any) -> int:
        return self.add(task, "claimed", "pending", "leased", owner=owner, fence=fence, **kw)

    def take_over(self, task: str, owner: str, fence: int, *, prev_fence: int, prev_expires: float,
                  ts: float) -> int:
        return self.add(task, "taken_over", "leased", "leased", owner=owner, fence=fence, ts=ts,
                        detail={"previous_owner": "x", "previous_fencing_token": prev_fence,
                                "previous_expires_at": prev_expires})

    def done(self, task: str, owner: str, fence: int) -> int:
        return self.add(task, "released", "leased", "done", owner=owner, fence=fence)


def only(report: HistoryReport, invariant: str) -> list:
    assert report.violations, "expected a violation"
    assert {v.invariant for v in report.violations} == {invariant}, report.summary()
    return report.violations


def test_a_clean_history_passes() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.add("t1", "checkpointed", "leased", "leased", owner="a", fence=1)
    log.take_over("t1", "b", 2, prev_fence=1, prev_expires=3.5, ts=4.0)
    log.add("t1", "retry_scheduled", "leased", "pending", owner="b", fence=2)
    log.claim("t1", "c", 3)
    log.add("t1", "recovered", "leased", "pending", owner="c", fence=3)
    log.claim("t1", "a", 4)
    log.add("t1", "dead_lettered", "leased", "dead", owner="a", fence=4)
    log.add("t1", "requeued", "dead", "pending")
    log.claim("t1", "a", 5)
    log.done("t1", "a", 5)
    log.enqueue("t2")
    log.claim("t2", "a", 1)
    log.add("t2", "dead_lettered", "leased", "dead", owner="a", fence=1)
    log.add("t2", "resolved", "dead", "dead")
    report = check_events(log.rows, {"t1": "done", "t2": "dead"})
    assert report.ok, report.summary()
    assert (report.tasks, report.events, report.terminal, report.unfinished) == (2, 16, {"done": 1, "dead": 1}, [])
    assert report.summary().startswith("history ok: 2 tasks, 16 events, done 1, dead 1")


# --- lock-delay ---------------------------------------------------------------------

def test_another_owners_claim_inside_a_recovered_leases_window_is_a_lock_delay_violation() -> None:
    log = Log()
    log.enqueue("t1", ts=1.0)
    log.claim("t1", "a", 1, ts=2.0)
    log.add("t1", "recovered", "leased", "pending", owner="a", fence=1, ts=5.0,
            detail={"lock_delay": 10, "held_until": 14.0})
    bad = log.claim("t1", "b", 2, ts=13.5)
    log.done("t1", "b", 2)
    [v] = only(check_events(log.rows), LOCK_DELAY)
    assert (v.task_id, v.event_id) == ("t1", bad) and "0.500 s before the lock-delay of 'a'" in v.message


def test_the_old_owner_inside_its_window_and_anyone_after_it_pass() -> None:
    log = Log()
    log.enqueue("t1", ts=1.0)
    log.claim("t1", "a", 1, ts=2.0)
    log.add("t1", "revoked", "leased", "pending", owner="a", fence=1, ts=3.0,
            detail={"lock_delay": 10, "held_until": 14.0})
    log.claim("t1", "a", 2, ts=4.0)  # the old owner may lease it again at once
    log.add("t1", "recovered", "leased", "pending", owner="a", fence=2, ts=20.0,
            detail={"lock_delay": 10, "held_until": 25.0})
    log.claim("t1", "b", 3, ts=25.0)
    log.done("t1", "b", 3)
    report = check_events(log.rows)
    assert report.ok, report.summary()


def test_a_takeover_inside_the_window_is_a_lock_delay_violation() -> None:
    log = Log()
    log.enqueue("t1", ts=1.0)
    log.claim("t1", "x", 1, ts=2.0)
    bad = log.add("t1", "taken_over", "leased", "leased", owner="b", fence=2, ts=6.0,
                  detail={"previous_owner": "x", "previous_fencing_token": 1, "previous_expires_at": 5.0,
                          "lock_delay": 3, "held_until": 8.0})
    log.done("t1", "b", 2)
    [v] = only(check_events(log.rows), LOCK_DELAY)
    assert v.event_id == bad and "'x'" in v.message


# --- results ---------------------------------------------------------------------------

def test_a_result_no_release_stored_or_one_that_was_lost_is_a_result_once_violation() -> None:
    log = Log()
    for task in ("t1", "t2", "t3"):
        log.enqueue(task)
        log.claim(task, "a", 1)
    log.add("t1", "released", "leased", "done", owner="a", fence=1, detail={"result": True})
    log.add("t2", "released", "leased", "done", owner="a", fence=1)
    log.add("t3", "released", "leased", "done", owner="a", fence=1, detail={"result": True})
    final = {"t1": "done", "t2": "done", "t3": "done"}
    assert check_events(log.rows, final, with_result={"t1", "t3"}).ok
    violations = only(check_events(log.rows, final, with_result={"t1", "t2"}), RESULT_ONCE)
    assert [(v.task_id, v.message) for v in violations] == [
        ("t2", "the task holds a result no done release stored"),
        ("t3", "a done release stored a result the task no longer holds")]


# --- priority order ------------------------------------------------------------------

def test_a_queue_claim_passing_over_a_claimable_higher_priority_is_a_priority_violation() -> None:
    log = Log()
    log.enqueue("high", ts=1.0, detail={"priority": 5})
    log.enqueue("low", ts=1.0)
    bad = log.claim("low", "a", 1, ts=10.0)
    log.claim("high", "b", 1, ts=20.0)
    log.done("low", "a", 1)
    log.done("high", "b", 1)
    [v] = only(check_events(log.rows), PRIORITY_ORDER)
    assert (v.task_id, v.event_id) == ("low", bad) and "'high' (priority 5)" in v.message


def test_what_skip_locked_allows_passes_the_priority_check() -> None:
    """A higher task claimed by a concurrent claim, a delayed, retrying or
    held one, and a claim that names its task: none breaks the order."""
    log = Log()
    log.enqueue("racing", ts=1.0, detail={"priority": 5})
    log.enqueue("delayed", ts=1.0, detail={"priority": 5, "available_at": 30.0})
    log.enqueue("held", ts=1.0, detail={"priority": 5})
    log.claim("held", "x", 1, ts=1.5)
    log.add("held", "recovered", "leased", "pending", owner="x", fence=1, ts=3.0,
            detail={"lock_delay": 60, "held_until": 61.0})
    log.enqueue("low", ts=1.0)
    log.enqueue("named", ts=1.0)
    log.claim("racing", "b", 1, ts=10.4)  # a concurrent claim that locked it first
    log.claim("low", "a", 1, ts=10.0)
    log.claim("named", "c", 1, ts=11.0, detail={"named": True})
    for task, owner in (("racing", "b"), ("low", "a"), ("named", "c")):
        log.done(task, owner, 1)
    log.claim("delayed", "d", 1, ts=40.0)
    report = check_events(log.rows, require_drained=False)
    assert report.ok, report.summary()


def test_a_real_priority_queue_passes(store: LeaseStore) -> None:
    for i in range(12):
        store.enqueue("q", task_id=f"t{i}", priority=i % 3, delay=0.2 if i == 11 else 0)
    while (claim := store.claim_task("q", "a", additional=True)).lease is not None:
        store.release_task(claim.lease, "done", result={"i": claim.lease.task_id})
    time.sleep(0.25)
    store.release_task(store.claim_task("q", "a", additional=True).lease, "done")
    report = check_history(store)
    assert report.ok, report.summary()


def test_second_claim_while_held_is_two_holders() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    bad = log.add("t1", "claimed", "pending", "leased", owner="b", fence=2)
    log.done("t1", "b", 2)
    [v] = only(check_events(log.rows), SINGLE_HOLDER)
    assert (v.task_id, v.event_id) == ("t1", bad)
    assert "'b' (fence 2) while the lease of 'a' (fence 1) was held" in v.message


def test_takeover_before_expiry_is_two_holders() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    bad = log.take_over("t1", "b", 2, prev_fence=1, prev_expires=10.0, ts=9.75)
    log.done("t1", "b", 2)
    [v] = only(check_events(log.rows), SINGLE_HOLDER)
    assert v.event_id == bad and "0.250 s before the previous lease expired" in v.message


def test_takeover_of_a_lease_that_was_not_current() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.take_over("t1", "b", 2, prev_fence=1, prev_expires=2.0, ts=3.0)
    bad = log.take_over("t1", "c", 3, prev_fence=1, prev_expires=2.0, ts=5.0)
    log.done("t1", "c", 3)
    [v] = only(check_events(log.rows), SINGLE_HOLDER)
    assert v.event_id == bad and "from fence 1, but fence 2 held" in v.message


def test_release_by_a_fenced_out_holder() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.take_over("t1", "b", 2, prev_fence=1, prev_expires=2.0, ts=3.0)
    bad = log.done("t1", "a", 1)
    [v] = only(check_events(log.rows), SINGLE_HOLDER)
    assert v.event_id == bad and "released accepted from fencing token 1 while fence 2 ('b')" in v.message


def test_fencing_token_reused_or_falling() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 3)
    log.add("t1", "retry_scheduled", "leased", "pending", owner="a", fence=3)
    bad = log.claim("t1", "b", 3)
    log.done("t1", "b", 3)
    [v] = only(check_events(log.rows), FENCING_MONOTONIC)
    assert v.event_id == bad and "fencing token 3, not above the earlier 3" in v.message


def test_done_twice_and_work_after_done() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.done("t1", "a", 1)
    bad = log.done("t1", "a", 1)
    violations = only(check_events(log.rows), TERMINAL_ONCE)
    assert [v.event_id for v in violations] == [bad] and "after the task was done" in violations[0].message


def test_dead_lettered_twice_without_requeue() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.add("t1", "dead_lettered", "leased", "dead", owner="a", fence=1)
    bad = log.add("t1", "dead_lettered", "leased", "dead", owner="a", fence=1)
    [v] = only(check_events(log.rows), TERMINAL_ONCE)
    assert v.event_id == bad and "dead-lettered a second time" in v.message


def test_state_change_without_its_event() -> None:
    """A task released to pending with no retry_scheduled row, then recovered: the log skipped a change."""
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.add("t1", "retry_scheduled", "leased", "pending", owner="a", fence=1)
    bad = log.add("t1", "recovered", "leased", "pending", owner="a", fence=1)
    log.claim("t1", "a", 2)
    log.done("t1", "a", 2)
    [v] = only(check_events(log.rows), EVENT_PER_CHANGE)
    assert v.event_id == bad and "without its event" in v.message


@pytest.mark.parametrize("case", ["no_enqueue", "wrong_statuses", "unknown_kind", "row_disagrees",
                                  "silent_task", "enqueued_twice", "duplicate_id"])
def test_incomplete_or_inconsistent_log(case: str) -> None:
    log = Log()
    final = {"t1": "done"}
    if case != "no_enqueue":
        log.enqueue("t1")
    if case == "enqueued_twice":
        log.enqueue("t1")
    if case == "wrong_statuses":
        log.add("t1", "claimed", "leased", "leased", owner="a", fence=1)
    else:
        log.claim("t1", "a", 1)
    if case == "unknown_kind":
        log.add("t1", "teleported", "leased", "leased")
    log.done("t1", "a", 1)
    if case == "row_disagrees":
        final = {"t1": "pending"}
    if case == "silent_task":
        final["t2"] = "done"
    if case == "duplicate_id":
        log.rows.append(dict(log.rows[-1]))
    violations = only(check_events(log.rows, final, require_drained=False), EVENT_PER_CHANGE)
    assert len(violations) == 1, violations
    expected = {"no_enqueue": "first event is claimed, not enqueued", "wrong_statuses": "claimed must go pending->leased",
                "unknown_kind": "unknown event kind 'teleported'", "row_disagrees": "task row says pending, its event log ends at done",
                "silent_task": "task is done but has no event", "enqueued_twice": "enqueued again while pending",
                "duplicate_id": "event id appears twice"}[case]
    assert expected in violations[0].message


def test_unfinished_tasks_fail_only_when_draining_is_required() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.enqueue("t2")
    relaxed = check_events(log.rows)
    violations = only(relaxed, NOT_DRAINED)
    assert [v.task_id for v in violations] == ["t1", "t2"] and relaxed.unfinished == ["t1", "t2"]
    assert "ended leased" in violations[0].message
    assert check_events(log.rows, require_drained=False).ok


def test_events_out_of_id_order_are_replayed_in_id_order() -> None:
    """PostgreSQL may commit two tasks' rows out of id order; each task is replayed by id."""
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.done("t1", "a", 1)
    assert check_events(list(reversed(log.rows))).ok


def test_summary_names_each_violation() -> None:
    log = Log()
    log.enqueue("t1")
    log.claim("t1", "a", 1)
    log.claim("t1", "b", 1)
    text = check_events(log.rows, require_drained=False).summary()
    assert "VIOLATED" in text and "fencing_monotonic=1" in text and "single_holder=1" in text
    assert "[single_holder] task 't1' event 3:" in text


def test_a_real_store_history_passes(store: LeaseStore) -> None:
    """Every path the store has (takeover, recovery, retries, dead letters, requeue) replays cleanly."""
    store.enqueue("q", task_id="done")
    store.enqueue("q", task_id="retried", max_attempts=3)
    store.enqueue("q", task_id="dead", max_attempts=1)
    store.enqueue("q", task_id="taken")
    lease = store.claim_task(task_id="done", owner="a").lease
    store.heartbeat(lease, checkpoint={"step": 1})
    store.release_task(lease, "done")
    store.release_task(store.claim_task(task_id="retried", owner="a").lease, "failed", "x")
    store.release_task(store.claim_task(task_id="dead", owner="a").lease, "failed", "x")
    store.claim_task(task_id="taken", owner="a", ttl=1)
    store.claim_task(task_id="retried", owner="b", ttl=1)
    store.clock.offset += 2
    assert store.claim_task(task_id="taken", owner="b").lease.took_over
    assert store.recover_stale().recovered == 1
    assert not check_history(store, require_drained=True).ok  # two still open
    store.release_task(store.claim_task(task_id="taken", owner="b").lease, "done")
    store.release_task(store.claim_task(task_id="retried", owner="c").lease, "done")
    store.requeue_dead_letter(store.list_dead_letters()[0].id)
    store.release_task(store.claim_task(task_id="dead", owner="d").lease, "done")
    report = check_history(store)
    assert report.ok, report.summary()
    assert (report.tasks, report.terminal, report.unfinished) == (4, {"done": 4, "dead": 0}, [])


def test_check_history_reads_in_pages(store: LeaseStore) -> None:
    from leasestore.history import read_snapshot

    store.enqueue_many("q", [None] * 7, task_ids=[f"t{i}" for i in range(7)])
    events, final, _ = read_snapshot(store, page_size=3)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events) and len(events) == 7
    assert sorted(final) == [f"t{i}" for i in range(7)] and set(final.values()) == {"pending"}


def test_check_history_of_one_queue(store: LeaseStore) -> None:
    store.enqueue("mine", task_id="m1")
    store.enqueue("other", task_id="o1")
    store.release_task(store.claim_task("mine", "a").lease, "done")
    assert check_history(store, queue="mine").ok
    report = check_history(store)
    assert report.unfinished == ["o1"] and [v.invariant for v in report.violations] == [NOT_DRAINED]


def test_the_checker_catches_a_store_that_takes_over_live_leases(store: LeaseStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A mutant store whose takeover ignores the expiry: the real log it writes must be flagged."""
    from leasestore.db import queries
    from leasestore.db.driver import ClaimNextKind, ClaimNextRow
    from leasestore.db.rows import CandidateRow

    d = store.database.driver
    live = (queries.SELECT_EXPIRED_CANDIDATE.replace("lease_expires_at <= ", "lease_expires_at > ")
            .replace("lease_expires_at + lock_delay <= ", "lease_expires_at + lock_delay > "))

    def any_candidate(queue, owner, now):
        row = yield from d.one(live, {"queue": queue, "owner": owner, "now": now})
        return None if row is None else CandidateRow.from_row(row)

    def always_the_full_path(params):
        return ClaimNextRow(ClaimNextKind.EXPIRED)
        yield

    monkeypatch.setattr(d, "expired_candidate", any_candidate)
    monkeypatch.setattr(d, "claim_next", always_the_full_path)
    store.enqueue("q", task_id="t1")
    store.claim_task("q", "a", ttl=60)
    stolen = store.claim_task("q", "b", ttl=60)
    assert stolen.lease is not None and stolen.lease.took_over  # the mutant did it
    report = check_history(store, require_drained=False)
    [v] = report.violations
    assert v.invariant == SINGLE_HOLDER and v.task_id == "t1" and "before the previous lease expired" in v.message


def test_the_checker_catches_a_store_that_reuses_fencing_tokens(store: LeaseStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from leasestore.db import queries

    monkeypatch.setattr(queries, "ACQUIRE", queries.ACQUIRE.replace("fencing_token = fencing_token + 1",
                                                                    "fencing_token = 1"))
    store.enqueue("q", task_id="t1")
    store.release_task(store.claim_task(task_id="t1", owner="a").lease, "failed", "x")
    store.release_task(store.claim_task(task_id="t1", owner="b").lease, "done")
    report = check_history(store)
    [v] = report.violations
    assert v.invariant == FENCING_MONOTONIC and "fencing token 1, not above the earlier 1" in v.message


# --- invariant 5: metrics equal the log -------------------------------------


def busy_history(store: LeaseStore, rng_seed: int, prefix: str) -> None:
    """Every kind of row the seven metrics count: retries, dead letters (requeued and
    resolved too), takeovers, recoveries, duplicates and conflicts."""
    import random

    rng = random.Random(rng_seed)
    for i in range(24):
        store.enqueue("m", task_id=f"{prefix}{i}", max_attempts=2)
    for step in range(60):
        owner = f"agent-{rng.randrange(4)}"
        result = store.claim_task("m", owner, ttl=rng.choice([0.1, 60]), additional=rng.random() < 0.7)
        if result.lease is None:
            continue
        roll = rng.random()
        if roll < 0.35:
            store.release_task(result.lease, "failed", "boom")
        elif roll < 0.6:
            store.release_task(result.lease, "done")
        elif roll < 0.7:
            store.claim_task(task_id=result.lease.task_id, owner=owner, ttl=60)  # duplicate
            store.claim_task(task_id=result.lease.task_id, owner="intruder", ttl=60)  # busy
        if step % 15 == 14:
            time.sleep(0.15)  # the 0.1 s leases expire: recovered or taken over
            store.recover_stale()
    letters = store.list_dead_letters()
    for letter in letters[:2]:
        store.requeue_dead_letter(letter.id)
    for letter in letters[2:3]:
        store.resolve_dead_letter(letter.id, "dropped")


def test_metrics_equal_a_recount_of_the_log(db_url: str) -> None:
    # Two minutes of history in the past, then the present: a one-minute window
    # must count only the second part, a long one both.
    past = LeaseStore(db_url, retry_policy=NO_BACKOFF, clock_offset=-120.0)
    busy_history(past, 1, "old-")
    past.close()
    store = LeaseStore(db_url, retry_policy=NO_BACKOFF)
    busy_history(store, 2, "new-")
    recent = compute_metrics(store, 1)
    whole = compute_metrics(store, 10)
    assert whole["retryAttempts"].value > recent["retryAttempts"].value > 0
    assert whole["lockExpired"].value > recent["lockExpired"].value > 0
    assert recent["duplicateSuppressed"].value > 0 and recent["lockConflictEvents"].value > 0
    assert check_metrics(store, 1) == [] and check_metrics(store, 10) == []
    store.close()


def test_a_wrong_metric_query_is_caught(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is not vacuous: a metric query that forgets recoveries disagrees with the log."""
    store = LeaseStore(sqlite_url, retry_policy=NO_BACKOFF)
    busy_history(store, 3, "t-")
    assert check_metrics(store, 60) == []
    assert store.events(limit=1000) and any(e["kind"] == "recovered" for e in store.events(limit=1000))
    from leasestore.db import queries

    mutant = queries.COUNT_METRIC_EVENTS_SINCE.replace("'recovered'", "'no_such_kind'")
    assert mutant != queries.COUNT_METRIC_EVENTS_SINCE
    monkeypatch.setattr(queries, "COUNT_METRIC_EVENTS_SINCE", mutant)
    violations = check_metrics(store, 60)
    assert [v.invariant for v in violations] == [METRICS_MATCH_LOG]
    assert violations[0].message.startswith("lockExpired is ")
    store.close()


def test_recount_follows_the_definitions() -> None:
    events = [{"ts": 1, "kind": "dead_lettered", "reason": "retry_limit"},  # before the window
              {"ts": 5, "kind": "dead_lettered", "reason": "lease_expired"},
              {"ts": 6, "kind": "requeued", "reason": None},
              {"ts": 7, "kind": "retry_scheduled", "reason": "failed"},
              {"ts": 8, "kind": "taken_over", "reason": None},
              {"ts": 9, "kind": "recovered", "reason": None}]
    locks = [{"ts": 5, "outcome": o} for o in ("busy", "conflict", "duplicate", "recovered", "recover_failed")]
    assert recount_metrics(events, locks, since=2) == {
        "retryAttempts": 1, "retryLimitReached": 1, "lockExpired": 3, "duplicateSuppressed": 1,
        "staleRecoveryFailureRate": 0.5, "deadLettersOpen": 1, "lockConflictEvents": 2}
    assert compare_metrics({"retryAttempts": 2}, {"retryAttempts": 1})[0].invariant == METRICS_MATCH_LOG
