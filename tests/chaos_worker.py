"""A real agent process for the fault tests: claims, works with heartbeats, releases.

Started by :class:`chaos.Worker` through a forkserver that has already
imported the store (a fresh interpreter per worker would spend more time
importing than working), or by hand: ``python tests/chaos_worker.py drain --db …``.

``drain`` works a queue until nothing is pending or leased, surviving every
typed store error, and writes its counts as JSON on exit. ``stale`` claims one
task, heartbeats until refused (the test pauses it past its TTL meanwhile),
then tries a checkpoint and a release and reports what the store said.
``effects`` is an agent with an unfenced side effect: it holds leases through
``store.lease()`` (either face, natively), appends a line to a file every few
milliseconds while it believes it holds the task, and stops at once when
``job.lost`` says otherwise (the lock-delay proof pauses it meanwhile).
Every exception is recorded by type; the tests decide which are allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from faces import FACES, open_store
from leasestore import NO_BACKOFF, AsyncLeaseStore, LeaseLost, LeaseStore, LeaseStoreError, StoreUnavailable, failpoints
from leasestore.types import ClaimStatus


def _open(args: argparse.Namespace) -> Any:
    """A store of the worker's face (``--face async``: the asyncio store, driven
    on this process's own event loop)."""
    return open_store(args.face, args.db, init=False, busy_timeout=args.busy_timeout,
                      retry_policy=NO_BACKOFF, fair_writes=not args.unfair)


def _queue_open(store: Any, queue: str) -> bool:
    counts = store.status_summary()["counts"]
    return any(c["queue"] == queue and c["status"] in ("pending", "leased") for c in counts)


def drain(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stats: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + args.deadline
    store = _open(args)
    beat = args.ttl / 3
    while time.monotonic() < deadline:
        try:
            claim = store.claim_task(args.queue, args.owner, ttl=args.ttl)
            if claim.lease is None:
                if claim.status is ClaimStatus.NO_TASK and not _queue_open(store, args.queue):
                    break
                time.sleep(0.02)
                continue
            stats["claims"] += 1
            stats["takeovers"] += claim.lease.took_over
            lease, left, step = claim.lease, rng.uniform(args.work_min, args.work_max), 0
            while left > 0:
                nap = min(left, beat)
                time.sleep(nap)
                left -= nap
                if left > 0:
                    step += 1
                    store.heartbeat(lease, checkpoint={"step": step, "by": args.owner})
                    stats["heartbeats"] += 1
            if rng.random() < args.fail_rate:
                store.release_task(lease, "failed", "injected failure")
                stats["failed"] += 1
            else:
                store.release_task(lease, "done")
                stats["done"] += 1
        except LeaseLost as exc:
            errors[f"LeaseLost:{exc.reason}"] += 1
        except StoreUnavailable as exc:
            errors[type(exc).__name__] += 1
            time.sleep(0.02)
        except LeaseStoreError as exc:
            errors[type(exc).__name__] += 1
        except Exception as exc:  # recorded, so the test can fail on anything untyped
            errors[f"untyped:{type(exc).__module__}.{type(exc).__name__}"] += 1
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            time.sleep(0.02)
    store.close()
    return {"owner": args.owner, **stats, "errors": dict(errors)}


def stale(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """Hold a lease, announce each heartbeat, and act late once refused."""
    store = _open(args)
    lease = store.claim_task(args.queue, args.owner, task_id=args.task_id, ttl=args.ttl).lease
    assert lease is not None
    say({"claimed": lease.task_id, "fence": lease.fencing_token})
    outcomes: dict[str, str] = {}
    while True:
        time.sleep(args.ttl / 3)
        try:
            store.heartbeat(lease)
        except LeaseLost as exc:
            outcomes["heartbeat"] = f"{type(exc).__name__}:{exc.reason}"
            break
        # The test pauses this process right after this line, between transactions.
        say({"beat": time.time()})
    for name, call in (("checkpoint", lambda: store.heartbeat(lease, checkpoint={"late": True})),
                       ("release", lambda: store.release_task(lease, "done"))):
        try:
            call()
            outcomes[name] = "accepted"
        except LeaseLost as exc:
            outcomes[name] = f"{type(exc).__name__}:{exc.reason}"
    store.close()
    return {"owner": args.owner, "fence": lease.fencing_token, "outcomes": outcomes}


# --- effects: an unfenced side effect, stopped only by noticing the loss -------------
EFFECT_EVERY = 0.005  # seconds between two side effects while holding


class _Effects:
    """Lines ``<time.time()> <event> <owner> <task> <fence>`` appended to one file
    (O_APPEND: each line lands whole, whoever else writes)."""

    def __init__(self, path: str, owner: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.owner = owner

    def write(self, event: str, task_id: str, fence: int) -> None:
        os.write(self.fd, f"{time.time():.6f} {event} {self.owner} {task_id} {fence}\n".encode())


def effects(args: argparse.Namespace) -> dict[str, Any]:
    out = _Effects(args.effects, args.owner)
    if args.face == "async":
        return asyncio.run(_effects_async(args, out))
    stats: Counter[str] = Counter()
    store = LeaseStore(args.db, init=False, retry_policy=NO_BACKOFF)
    deadline = time.monotonic() + args.deadline
    while time.monotonic() < deadline:
        try:
            with store.lease(args.queue, args.owner, ttl=args.ttl) as job:
                if job is None:
                    time.sleep(args.poll)
                    continue
                stats["claims"] += 1
                # Work counted in steps, not by the clock: a holder that was
                # stopped carries on where it was, as a real agent would.
                for _ in range(round(args.work / EFFECT_EVERY)):
                    if job.lost.is_set():
                        break
                    out.write("effect", job.lease.task_id, job.fencing_token)
                    time.sleep(EFFECT_EVERY)
                if job.lost.is_set():
                    out.write("noticed", job.lease.task_id, job.fencing_token)
        except LeaseLost:
            stats["lost"] += 1
            time.sleep(args.cooldown)
        except LeaseStoreError as exc:
            stats[type(exc).__name__] += 1
            time.sleep(args.poll)
    store.close()
    return dict(stats)


async def _effects_async(args: argparse.Namespace, out: _Effects) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    store = AsyncLeaseStore(args.db, init=False, retry_policy=NO_BACKOFF)
    deadline = time.monotonic() + args.deadline
    while time.monotonic() < deadline:
        try:
            async with store.lease(args.queue, args.owner, ttl=args.ttl) as job:
                if job is None:
                    await asyncio.sleep(args.poll)
                    continue
                stats["claims"] += 1
                for _ in range(round(args.work / EFFECT_EVERY)):
                    if job.lost.is_set():
                        break
                    out.write("effect", job.lease.task_id, job.fencing_token)
                    await asyncio.sleep(EFFECT_EVERY)
                if job.lost.is_set():
                    out.write("noticed", job.lease.task_id, job.fencing_token)
        except LeaseLost:
            stats["lost"] += 1
            await asyncio.sleep(args.cooldown)
        except LeaseStoreError as exc:
            stats[type(exc).__name__] += 1
            await asyncio.sleep(args.poll)
    await store.close()
    return dict(stats)


def _wait_for_go(go: Path, ready: Path) -> None:
    # Every worker starts at once, however long each took to come up.
    ready.touch()
    while not go.exists():
        time.sleep(0.005)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["drain", "stale", "effects"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--face", choices=FACES, default="sync")
    parser.add_argument("--queue", default="chaos")
    parser.add_argument("--owner", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--work-min", type=float, default=0.02)
    parser.add_argument("--work-max", type=float, default=0.1)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--busy-timeout", type=float, default=5.0)
    parser.add_argument("--unfair", action="store_true", help="no write gate: SQLite's own busy handler")
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", help="write the result JSON here")
    parser.add_argument("--stderr", help="append diagnostics here")
    parser.add_argument("--failpoints", help="arm leasestore failpoints, e.g. after_claim_update:stop")
    parser.add_argument("--task-id", help="stale mode: claim this task instead of the next one")
    parser.add_argument("--effects", help="effects mode: append side-effect lines to this file")
    parser.add_argument("--work", type=float, default=0.2, help="effects mode: seconds of work per lease")
    parser.add_argument("--poll", type=float, default=0.02, help="effects mode: seconds between empty claims")
    parser.add_argument("--cooldown", type=float, default=1.5, help="effects mode: rest after a lost lease")
    parser.add_argument("--go", help="say ready (a file beside --stats), then start once this file exists")
    return parser.parse_args(argv)


def run(argv: list[str], channel: Any = None) -> None:
    """Process entry point; ``channel`` (a pipe end) receives the stale holder's progress."""
    args = parse(argv)
    if args.stderr:
        sys.stderr = open(args.stderr, "a", encoding="utf-8", buffering=1)
    if args.failpoints:
        failpoints.arm(args.failpoints)
    if args.go:
        _wait_for_go(Path(args.go), Path(args.stats).with_suffix(".ready"))
    say = channel.send if channel is not None else (lambda msg: print(json.dumps(msg), flush=True))
    modes = {"drain": drain, "stale": lambda a: stale(a, say), "effects": effects}
    result = modes[args.mode](args)
    text = json.dumps(result)
    if args.stats:
        with open(args.stats, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        print(text, flush=True)


if __name__ == "__main__":
    run(sys.argv[1:])
