"""A blocking agent: claim, work in steps with checkpoints, release.

    python examples/agent_sync.py [DATABASE_URL_OR_SQLITE_PATH]

Without an argument it uses the default store ($LEASESTORE_DATABASE_URL, else
$ORCH_DB_PATH, else ~/.openclaw/data/orchestrator.db).
"""

import sys

from leasestore import LeaseStore


def send_part(payload: dict, step: int, fence: int) -> None:
    # A real agent would call an API here, passing the fencing token along so
    # the receiver can refuse a write from a holder whose lease has ended.
    print(f"sending part {step} to {payload['to']} (fencing token {fence})")


store = LeaseStore(sys.argv[1] if len(sys.argv) > 1 else None)
store.enqueue("emails", {"to": "ops@example.com"}, dedupe_key="welcome-ops")

with store.lease("emails", owner="agent-7", ttl=30) as job:      # heartbeats every ttl/3
    if job is not None:
        start = (job.lease.checkpoint or {}).get("step", 0)      # resume after a crash
        for step in range(start, 3):
            job.ensure_held()                                    # raises LeaseLost once the lease is gone
            send_part(job.lease.payload, step, fence=job.fencing_token)
            job.checkpoint({"step": step + 1})
# Leaving the block releases "done"; an exception releases "failed" (retried with
# backoff up to max_attempts, then dead-lettered); a lost lease raises LeaseLost.

print(store.get_task(store.list_tasks(queue="emails")[0].id).status)
store.close()
