"""The blocking store's connections: kept between operations, bounded, never
shared with a forked child, thrown away when the server drops them."""

from __future__ import annotations

import os
import threading

import psycopg

from leasestore import LeaseStore
from leasestore.db.engine import POOL_SIZE

from tests.conftest import PG_DSN


def _open_connections(store: LeaseStore) -> int:
    return len(store._db.idle._idle)  # noqa: SLF001 - the test inspects the stack it pins


def test_idle_connections_are_kept_and_bounded(db_url: str) -> None:
    store = LeaseStore(db_url)
    try:
        store.enqueue("q", {"n": 0})
        assert _open_connections(store) == 1  # one operation, one connection, kept for the next
        store.status_summary()
        assert _open_connections(store) == 1

        start = threading.Barrier(POOL_SIZE * 2)
        errors: list[BaseException] = []

        def busy() -> None:
            try:
                start.wait()
                for _ in range(20):
                    store.enqueue("q", {"n": 1})
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=busy) for _ in range(POOL_SIZE * 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert 1 <= _open_connections(store) <= POOL_SIZE
        counts = {(c["queue"], c["status"]): c["count"] for c in store.status_summary()["counts"]}
        assert counts == {("q", "pending"): 1 + 20 * POOL_SIZE * 2}
    finally:
        store.close()
    assert _open_connections(store) == 0


def test_a_forked_child_opens_its_own_connections(db_url: str) -> None:
    store = LeaseStore(db_url)
    try:
        store.enqueue("q", {"n": 1}, task_id="t1")
        store.enqueue("q", {"n": 2}, task_id="t2")
        pid = os.fork()
        if pid == 0:  # the child: its parent's kept connections must not be used or closed
            code = 1
            try:
                if store._db.idle.take() is not None:  # noqa: SLF001 - one of the parent's
                    os._exit(2)
                lease = store.claim_task("q", "child", ttl=30).lease
                if lease is not None:
                    store.release_task(lease, "done")
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's own connection still works (on PostgreSQL a child closing
        # it would have ended the parent's session on the shared socket).
        lease = store.claim_task("q", "parent", ttl=30).lease
        assert lease is not None
        store.release_task(lease, "done")
        assert {t.id: t.status for t in store.list_tasks(queue="q")} == {"t1": "done", "t2": "done"}
    finally:
        store.close()


def test_a_kept_connection_the_server_dropped_is_replaced(pg_url: str) -> None:
    store = LeaseStore(pg_url)
    try:
        store.enqueue("q", {"n": 1})
        kept = store._db.idle._idle[-1]  # noqa: SLF001
        backend_pid = kept.fairy.dbapi_connection.info.backend_pid
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        # The next operation finds the connection dead, drops it and runs on a fresh one.
        lease = store.claim_task("q", "a", ttl=30).lease
        assert lease is not None
        store.release_task(lease, "done")
        assert all(h.fairy.dbapi_connection.info.backend_pid != backend_pid
                   for h in store._db.idle._idle)  # noqa: SLF001
    finally:
        store.close()
