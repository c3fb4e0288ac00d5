"""Finish a task in the same transaction as the agent's own rows (PostgreSQL).

The report row, the follow-up task and the release commit together, or not at
all: a crash before the commit leaves the task leased (another agent gets it
when the lease runs out) and writes nothing. A stale holder's release raises
LeaseLost inside the transaction, so its own rows roll back with it.

    python examples/transactional.py postgresql+psycopg://postgres@127.0.0.1:5432/test
    python examples/transactional.py sqlite:///demo.db     # SQLite refuses connection=
"""

import sys

import psycopg

from leasestore import InvalidArgument, LeaseStore

url = sys.argv[1] if len(sys.argv) > 1 else "sqlite:///leasestore-example.db"
store = LeaseStore(url)
store.enqueue("reports", {"customer": 7})
lease = store.claim_task("reports", "agent-1", ttl=60).lease
assert lease is not None

if not url.startswith("postgresql"):
    try:
        store.release_task(lease, "done", connection=object())
    except InvalidArgument as exc:
        print(f"as expected on SQLite: {exc}")
    store.release_task(lease, "done")
    sys.exit(0)

with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS reports (customer int, body text)")
    conn.execute("INSERT INTO reports VALUES (%s, %s)", (7, "quarterly summary"))
    store.enqueue("emails", {"customer": 7}, connection=conn)
    store.release_task(lease, "done", result={"rows": 1}, connection=conn)
    assert store.get_task(lease.task_id).status == "leased"  # not committed yet
# Leaving the block commits: the report, the e-mail task and the release at once.
task = store.get_task(lease.task_id)
print(task.status, task.result)
assert task.status == "done" and task.result == {"rows": 1}
store.close()
