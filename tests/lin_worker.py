"""A client process for the linearizability test: named claims and releases on
a few hot tasks, every call recorded with its invoke and return times."""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from faces import open_store
from leasestore import LeaseLost, LeaseStoreError


def run(url: str, face: str, owner: str, tasks: list[str], seconds: float, seed: int, out: str,
        start_at: float) -> None:
    rng = random.Random(seed)
    store = open_store(face, url, init=False)
    calls: list[dict[str, Any]] = []
    errors: list[str] = []
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            task = rng.choice(tasks)
            invoke = time.monotonic()
            try:
                claim = store.claim_task(task_id=task, owner=owner, ttl=600)
            except LeaseStoreError as exc:  # busy storage etc.: the call's effect is unknown
                errors.append(f"claim: {type(exc).__name__}: {exc}")
                break
            ret = time.monotonic()
            if claim.lease is not None:
                answer: list[Any] = [claim.status.value, claim.lease.fencing_token]
            elif claim.status.value == "busy":
                answer = ["busy", claim.holder]
            else:
                answer = [claim.status.value]
            calls.append({"client": owner, "op": "claim", "task": task, "invoke": invoke, "ret": ret,
                          "answer": answer})
            if claim.lease is None:
                continue
            time.sleep(rng.uniform(0, 0.003))
            invoke = time.monotonic()
            try:
                store.release_task(claim.lease, "failed", "again", retry_in=0)
                answer = ["ok"]
            except LeaseLost:
                answer = ["refused"]
            except LeaseStoreError as exc:
                errors.append(f"release: {type(exc).__name__}: {exc}")
                break
            calls.append({"client": owner, "op": "release", "task": task, "invoke": invoke,
                          "ret": time.monotonic(), "answer": answer, "fence": claim.lease.fencing_token})
    finally:
        store.close()
        with open(out, "w", encoding="utf-8") as fh:
            json.dump({"calls": calls, "errors": errors}, fh)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    run(**args)
