"""Locust users that are agents: they work through the library, not HTTP.

Each user owns a :class:`StoreClient`, which times every store call and fires
it as a locust request event, so locust's statistics, CSV and HTML report
carry claim, heartbeat and release latencies. Users are built for one user
per process (``locust --processes N``): Python's ``sqlite3`` blocks in C, which
gevent cannot switch away from, so several users in one process would take
turns instead of contending.

Agents start together: each tells the master it is ready and waits for the
master's "go", sent once every agent is ready, so the measured window (every
agent running; see ``loadtest.report``) covers the run rather than the
processes' start-up skew.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import gevent
import gevent.event
from locust import User, constant, task

from leasestore import LeaseStore, LeaseStoreError
from leasestore.types import ClaimResult, ClaimStatus, Lease, RecoveryReport

from . import names

T = TypeVar("T")

# An agent that found nothing waits this long before asking again.
NO_TASK_PAUSE = 0.01
# How often a stalling agent's iteration also sweeps for expired leases.
RECOVER_PROBABILITY = 0.1
# An agent waits at most this long for the master's "go", then starts anyway.
START_TIMEOUT = 60.0

# Set in each worker process when the master says every agent is ready.
go = gevent.event.Event()


class StoreClient:
    """The library with every call reported to locust as a request."""

    def __init__(self, store: LeaseStore, fire: Callable[..., Any]) -> None:
        self.store = store
        self._fire = fire
        # Locust's histogram rounds times under 100 ms to whole milliseconds;
        # store calls take fractions of one, so every call is kept beside it
        # (operation, request name, start epoch seconds, ms, ok), and the runner
        # measures rates and latencies in its own window from these.
        self.calls: list[tuple[str, str, float, float, bool]] = []

    def _call(self, operation: str, call: Callable[[], T], name_of: Callable[[T], str]) -> T | None:
        wall, started = time.time(), time.perf_counter()
        try:
            result = call()
        except LeaseStoreError as exc:
            self._report(operation, operation, wall, started, exc)
            return None
        self._report(operation, name_of(result), wall, started, None)
        return result

    def _report(self, operation: str, name: str, wall: float, started: float, exc: BaseException | None) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.calls.append((operation, name, wall, elapsed_ms, exc is None))
        self._fire(request_type=operation, name=name, response_time=elapsed_ms,
                   response_length=0, exception=exc, context={})

    def save_samples(self, folder: str, agent: str) -> None:
        path = Path(folder) / f"samples-{agent}.json"
        path.write_text(json.dumps({"agent": agent, "calls": self.calls}, separators=(",", ":")))

    def claim(self, queue: str, owner: str, ttl: float, task_id: str | None = None) -> ClaimResult | None:
        return self._call("claim", lambda: self.store.claim_task(queue, owner, task_id=task_id, ttl=ttl),
                          _claim_name)

    def heartbeat(self, lease: Lease) -> bool:
        return self._call("heartbeat", lambda: self.store.heartbeat(lease), lambda _r: names.HEARTBEAT) is not None

    def release(self, lease: Lease, failed: bool) -> bool:
        if failed:
            call = lambda: self.store.release_task(lease, "failed", "simulated agent failure")  # noqa: E731
        else:
            call = lambda: self.store.release_task(lease, "done")  # noqa: E731
        name = names.RELEASE_FAILED if failed else names.RELEASE_DONE
        return self._call("release", call, lambda _r: name) is not None

    def recover(self) -> RecoveryReport | None:
        return self._call("recover", self.store.recover_stale, lambda _r: names.RECOVER)


def _claim_name(result: ClaimResult) -> str:
    if result.status == ClaimStatus.BUSY:
        return names.CLAIM_BUSY
    if result.status == ClaimStatus.NO_TASK:
        return names.CLAIM_NO_TASK
    if result.status == ClaimStatus.RESUMED:
        return names.CLAIM_RESUMED
    assert result.lease is not None
    return names.CLAIM_TAKEOVER if result.lease.took_over else names.CLAIM


class AgentUser(User):
    """One agent: ``iterations`` times claim → heartbeat(s) → release.

    It fails its task with probability ``--fail-rate``. After its iterations it
    tells the master (which ends the run once every agent has) and idles.
    """

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        # The engine is made here, after locust forked this worker process.
        self.options = self.environment.parsed_options
        self.client = StoreClient(
            LeaseStore(self.options.store_url, init=False, retry_policy=names.LOAD_RETRY_POLICY,
                       default_ttl=self.options.lease_ttl),
            self.environment.events.request.fire)
        self.rng = random.Random(f"{self.options.seed}-{os.getpid()}")
        self.incarnation = 0
        self.completed = 0
        self.finished = False
        self.saved = False
        self.agent = f"agent-{os.getpid()}"
        self.environment.runner.send_message(names.READY_MESSAGE, self.agent)
        go.wait(START_TIMEOUT)

    def on_stop(self) -> None:
        self.save()  # a run cut short by --run-time still reports what it measured
        self.client.store.close()

    def save(self) -> None:
        if self.options.samples_dir and not self.saved:
            self.client.save_samples(self.options.samples_dir, self.agent)
            self.saved = True

    @property
    def owner(self) -> str:
        return f"agent-{os.getpid()}-{self.incarnation}"

    @task
    def iteration(self) -> None:
        if self.finished:
            gevent.sleep(0.1)
            return
        self.run_once()
        self.completed += 1
        if self.completed >= self.options.iterations:
            self.finished = True
            self.save()
            self.environment.runner.send_message(names.DONE_MESSAGE, self.owner)

    def run_once(self) -> None:
        self.work_on(self.claim_next())

    def claim_next(self, task_id: str | None = None) -> Lease | None:
        result = self.client.claim(self.options.queue, self.owner, self.options.lease_ttl, task_id)
        if result is None or result.lease is None:
            gevent.sleep(NO_TASK_PAUSE)
            return None
        return result.lease

    def work_on(self, lease: Lease | None) -> None:
        if lease is None:
            return
        if not self.heartbeats(lease, self.options.heartbeats):
            return
        self.pause()
        self.client.release(lease, failed=self.rng.random() < self.options.fail_rate)

    def heartbeats(self, lease: Lease, count: int) -> bool:
        for _ in range(count):
            self.pause()
            if not self.client.heartbeat(lease):
                return False
        return True

    def pause(self) -> None:
        if self.options.work_ms > 0:
            gevent.sleep(self.options.work_ms / 1000)


class DrainAgent(AgentUser):
    """Many agents draining one queue (the seed's concurrency run)."""


class HotTaskAgent(AgentUser):
    """Agents fighting over a few hot task ids: each claims a named task among
    the first ``--hot-tasks`` it has not seen finished, so claims collide."""

    def on_start(self) -> None:
        super().on_start()
        self.remaining = [names.task_id(self.options.task_prefix, i) for i in range(self.options.task_count)]

    def run_once(self) -> None:
        if not self.remaining:
            self.work_on(self.claim_next())
            return
        index = self.rng.randrange(min(self.options.hot_tasks, len(self.remaining)))
        chosen = self.remaining[index]
        result = self.client.claim(self.options.queue, self.owner, self.options.lease_ttl, chosen)
        if result is not None and result.status == ClaimStatus.NO_TASK:
            # Done, dead or waiting out a retry backoff: move the window on.
            del self.remaining[index]
        if result is None or result.lease is None:
            gevent.sleep(NO_TASK_PAUSE)
            return
        self.work_on(result.lease)


class StallingAgent(AgentUser):
    """Agents that stop heartbeating mid-task with probability ``--stall-rate``.

    The stalled agent comes back under a new identity and leaves its lease to
    expire, so other agents take it over and sweepers recover it (lockExpired,
    stale recovery). Every agent sometimes runs the sweep itself.
    """

    def run_once(self) -> None:
        if self.rng.random() < RECOVER_PROBABILITY:
            self.client.recover()
        lease = self.claim_next()
        if lease is None:
            return
        if self.rng.random() < self.options.stall_rate:
            self.heartbeats(lease, 1)
            self.incarnation += 1
            return
        self.work_on(lease)

