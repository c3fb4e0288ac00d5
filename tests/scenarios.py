"""A store history with known metric values, shared by the exporter tests."""

from __future__ import annotations

import time

from leasestore import LeaseStore, RetryPolicy

# What the seven gauges read after ``breach_some_thresholds`` (default thresholds):
# dead letters (2 >= 2) and retry limit (2 >= 1) are in alert, the rest are not.
EXPECTED = {
    "leasestore_retry_attempts": 1.0,
    "leasestore_retry_limit_reached": 2.0,
    "leasestore_lock_expired": 1.0,
    "leasestore_duplicate_suppressed": 1.0,
    "leasestore_stale_recovery_failure_ratio": 0.0,
    "leasestore_dead_letters_open": 2.0,
    "leasestore_lock_conflict_events": 1.0,
}
FIRING = {"LeaseStoreRetryLimitReached", "LeaseStoreDeadLettersOpen"}


def breach_some_thresholds(url: str) -> None:
    store = LeaseStore(url, retry_policy=RetryPolicy(base=60, cap=60, jitter=0))
    for name in ("dead-1", "dead-2"):
        store.enqueue("mail", task_id=name, max_attempts=1)
        store.release_task(store.claim_task(task_id=name, owner="a").lease, "failed", "smtp down")
    store.enqueue("mail", task_id="retry", max_attempts=3)
    store.release_task(store.claim_task(task_id="retry", owner="a").lease, "failed", "timeout")
    store.enqueue("crawl", task_id="expiring")
    store.claim_task(task_id="expiring", owner="b", ttl=0.1)
    time.sleep(0.2)
    assert store.recover_stale().recovered == 1
    store.enqueue("crawl", task_id="held")
    store.claim_task(task_id="held", owner="c", ttl=600)
    store.claim_task(task_id="held", owner="c", ttl=600)  # duplicate: resumed
    store.claim_task(task_id="held", owner="d", ttl=600)  # busy: a conflict
    store.close()
