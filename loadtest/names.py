"""What the agents and the runner share: request names, scenarios, retry policy.

Each store call is one locust request. ``request_type`` is the operation and
``name`` the operation with its outcome, so contention shows in locust's own
tables without "busy" or "noTask" counting as failures.
"""

from __future__ import annotations

from leasestore import RetryPolicy

# Failed tasks come back quickly, so retries happen inside a short run (the
# agents and the runner's drain use the same policy).
LOAD_RETRY_POLICY = RetryPolicy(base=0.05, cap=1.0)

CLAIM = "claim"  # a new lease on a pending task
CLAIM_TAKEOVER = "claim:takeover"  # an expired lease taken over (lockExpired)
CLAIM_RESUMED = "claim:resumed"  # the owner's own lease came back (duplicateSuppressed)
CLAIM_BUSY = "claim:busy"  # another owner holds it (a lock conflict)
CLAIM_NO_TASK = "claim:noTask"
HEARTBEAT = "heartbeat"
RELEASE_DONE = "release:done"
RELEASE_FAILED = "release:failed"
RECOVER = "recover"

OPERATIONS = ("claim", "heartbeat", "release", "recover")

# What each successful request must have left in lock_events (invariant 5's
# cross-check: the load's own counts against the audit log).
LOCK_OUTCOME_OF = {
    CLAIM: "acquired",
    CLAIM_TAKEOVER: "taken_over",
    CLAIM_RESUMED: "duplicate",
    CLAIM_BUSY: "busy",
    HEARTBEAT: "extended",
    RELEASE_DONE: "released",
    RELEASE_FAILED: "released",
}
# A heartbeat or release refused for a lost lease is a locust failure and a
# ``conflict`` row.
FAILURE_LOCK_OUTCOME = "conflict"

SCENARIOS = ("drain", "hot", "stall")
USER_CLASS = {"drain": "DrainAgent", "hot": "HotTaskAgent", "stall": "StallingAgent"}

# The message a worker's agent sends its master when it has run its iterations.
DONE_MESSAGE = "leasestore_agent_done"
# An agent is ready (its store is open); the master answers every worker with
# GO once all agents are, so they start together.
READY_MESSAGE = "leasestore_agent_ready"
GO_MESSAGE = "leasestore_agents_go"


def task_id(prefix: str, index: int) -> str:
    """The id of a run's ``index``-th task (the runner enqueues, hot agents name them)."""
    return f"{prefix}-{index:06d}"
