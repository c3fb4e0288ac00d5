"""Only the holder may write, and its secret never leaves the holder's hands.

The store keeps only the SHA-256 of a lease token; no table, log record,
exception, CLI output or metrics report ever contains the token itself.
"""

from __future__ import annotations

import json
from dataclasses import replace
import logging
import secrets

import pytest

from chaos import snapshot
from leasestore import InvalidArgument, LeaseLost, LeaseRef, LeaseStore, StaleLeaseToken
from leasestore.cli import main as cli_main
from leasestore.metrics import compute_metrics
from leasestore.ops.common import hash_token


def _conflicts(store: LeaseStore) -> int:
    return sum(1 for row in snapshot(store)["lock_events"] if "conflict" in row)


def test_only_the_holder_can_heartbeat_or_release(store: LeaseStore) -> None:
    """Every wrong token is refused with a conflict row and leaves the task as it was."""
    store.enqueue("q", task_id="t1")
    store.enqueue("q", task_id="t2")
    first = store.claim_task(task_id="t1", owner="a", ttl=1).lease
    other = store.claim_task(task_id="t2", owner="b", ttl=600).lease
    store.clock.offset += 5
    holder = store.claim_task(task_id="t1", owner="c", ttl=600).lease
    assert holder.fencing_token == 2
    before = store.get_task("t1")
    wrong = [
        LeaseRef("t1", other.token, holder.fencing_token),  # another task's token
        LeaseRef("t1", first.token, first.fencing_token),  # the lease before the takeover
        LeaseRef("t1", first.token, holder.fencing_token),  # old token, current fence
        LeaseRef("t1", holder.token, first.fencing_token),  # current token, old fence
        LeaseRef("t1", holder.token + "x", holder.fencing_token),
        LeaseRef("t1", hash_token(holder.token), holder.fencing_token),  # the stored hash is no token
        *(LeaseRef("t1", secrets.token_urlsafe(32), holder.fencing_token) for _ in range(100)),
        # The current token with every other fence: only the fencing condition refuses these.
        *(LeaseRef("t1", holder.token, fence) for fence in (1, 3, 4, 100, 2**31 - 1)),
    ]
    # The same through full Lease objects, which take the release path that
    # trusts the lease's own attempt count.
    wrong += [replace(holder, token=ref.token, fencing_token=ref.fencing_token) for ref in list(wrong)]
    conflicts = _conflicts(store)
    for ref in wrong:
        for write, args in ((store.heartbeat, ()), (store.release_task, ("done",)),
                            (store.release_task, ("failed", "x"))):
            with pytest.raises(LeaseLost):
                write(ref, *args)
        with pytest.raises(LeaseLost):
            store.heartbeat(ref, checkpoint={"evil": 1})
    assert _conflicts(store) == conflicts + 4 * len(wrong)
    for token in ("", "x" * 1_000_000, "a\x00b", None, 42):
        with pytest.raises(InvalidArgument):
            store.heartbeat(LeaseRef("t1", token, holder.fencing_token))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            store.release_task(LeaseRef("t1", token, holder.fencing_token))  # type: ignore[arg-type]
    assert store.get_task("t1") == before
    store.heartbeat(holder)
    assert store.release_task(holder, "done").result == "done"


def test_a_resumed_lease_retires_the_old_token(store: LeaseStore) -> None:
    """The same owner claiming again gets a fresh secret; the previous process's token stops working."""
    store.enqueue("q", task_id="t1")
    old = store.claim_task("q", "agent").lease
    new = store.claim_task("q", "agent").lease
    assert new.fencing_token == old.fencing_token and new.token != old.token
    with pytest.raises(StaleLeaseToken):
        store.release_task(old, "done")
    store.release_task(new, "done")


def test_tokens_never_leave_the_holder(store: LeaseStore, db_url: str, capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="leasestore")
    store.enqueue("q", task_id="t1", max_attempts=1)
    store.enqueue("q", task_id="t2")
    tokens = []
    lease = store.claim_task("q", "a", ttl=0.5).lease
    tokens.append(lease.token)
    again = store.claim_task("q", "a", ttl=0.5).lease
    tokens.append(again.token)
    store.heartbeat(again, checkpoint={"progress": 1})
    try:
        store.heartbeat(lease)
    except LeaseLost as exc:
        messages = [str(exc), repr(exc)]
    second = store.claim_task("q", "b", additional=True, ttl=600).lease
    tokens.append(second.token)
    store.release_task(second, "failed", "boom")
    store.clock.offset += 5
    store.recover_stale()
    tables = json.dumps(snapshot(store), default=str)

    code = cli_main(["claim", "q", "--owner", "cli", "--json", "--db", db_url])
    cli_token = json.loads(capsys.readouterr().out)["token"]
    assert code == 0
    tokens.append(cli_token)
    outputs = [repr(lease), repr(second), tables, json.dumps(compute_metrics(store, 60).as_dict()),
               *messages, *(r.getMessage() for r in caplog.records)]
    for command in (["metrics", "60", "--json"], ["metrics", "60"], ["events", "--json", "--limit", "500"],
                    ["status", "--json"], ["events"], ["dead-letters", "list", "--json"]):
        assert cli_main([*command, "--db", db_url]) == 0
        outputs.append(capsys.readouterr().out)
    outputs.append(json.dumps(snapshot(store), default=str))
    outputs.append(_exporter_text(db_url))
    for token in tokens:
        for text in outputs:
            assert token not in text
    stored = {row[7] for row in snapshot(store)["tasks"]}  # lease_token_hash
    assert hash_token(cli_token) in stored and all(h is None or len(h) == 64 for h in stored)


def _exporter_text(db_url: str) -> str:
    """One scrape of the exporter's collector, as Prometheus would read it."""
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.collector import StoreCollector

    collector = StoreCollector(db_url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        collector.close()
    assert "leasestore_up 1.0" in text
    return text


def test_a_fence_beyond_any_the_store_issues_is_bad_input(store: LeaseStore) -> None:
    """Once an untyped overflow error from PostgreSQL's 32-bit column."""
    store.enqueue("q", task_id="t1")
    holder = store.claim_task("q", "a").lease
    assert holder is not None
    for fence in (2**31, 2**62):
        with pytest.raises(InvalidArgument):
            store.release_task(LeaseRef("t1", holder.token, fence), "done")
    store.release_task(holder, "done")
