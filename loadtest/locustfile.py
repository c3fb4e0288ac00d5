"""The phase-3 locustfile: agents working through the library.

Run by ``leasestore phase3 …`` as ``locust --headless --processes N`` with one
user per process; the store and the run's shape come from the options below.
The run ends when every agent has done its iterations (each tells the master),
or at ``--run-time`` at the latest.
"""

from __future__ import annotations

from typing import Any

import gevent
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from loadtest import names, users
from loadtest.users import DrainAgent, HotTaskAgent, StallingAgent

__all__ = ["DrainAgent", "HotTaskAgent", "StallingAgent"]

# Lets the workers' last stats reports reach the master before it quits.
FINAL_REPORT_GRACE = 0.5


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("leasestore")
    group.add_argument("--store-url", required=True, help="SQLite path or SQLAlchemy URL of the store")
    group.add_argument("--queue", required=True, help="the run's queue")
    group.add_argument("--task-prefix", required=True, help="prefix of the run's task ids")
    group.add_argument("--task-count", type=int, default=0, help="tasks the runner enqueued")
    group.add_argument("--iterations", type=int, default=25, help="claim attempts per agent")
    group.add_argument("--fail-rate", type=float, default=0.1, help="probability an agent fails its task")
    group.add_argument("--lease-ttl", type=float, default=5.0, help="lease TTL, seconds")
    group.add_argument("--heartbeats", type=int, default=1, help="heartbeats per held task")
    group.add_argument("--work-ms", type=float, default=0.0, help="simulated work before each heartbeat and the release")
    group.add_argument("--hot-tasks", type=int, default=4, help="hot scenario: how many task ids agents fight over")
    group.add_argument("--stall-rate", type=float, default=0.2, help="stall scenario: probability an agent stops heartbeating")
    group.add_argument("--agents", type=int, default=1, help="agents the master waits for before it ends the run")
    group.add_argument("--samples-dir", default="", help="where each agent writes its exact latencies")
    group.add_argument("--seed", type=int, default=0, help="seed of the agents' random choices")


@events.init.add_listener
def _start_together(environment: Any, **_kwargs: Any) -> None:
    """Workers: wait for GO. Master: send GO once every agent said it is ready."""
    runner = environment.runner
    if runner is None:
        return
    if not isinstance(runner, MasterRunner):
        runner.register_message(names.GO_MESSAGE, lambda environment, msg, **_kw: users.go.set())
    if isinstance(runner, WorkerRunner):
        return
    ready: set[str] = set()

    def on_ready(environment: Any, msg: Any, **_kw: Any) -> None:
        ready.add(str(msg.data))
        if len(ready) == environment.parsed_options.agents:
            runner.send_message(names.GO_MESSAGE, None)

    runner.register_message(names.READY_MESSAGE, on_ready)


@events.init.add_listener
def _end_when_agents_are_done(environment: Any, **_kwargs: Any) -> None:
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner):
        return
    finished: set[str] = set()

    def on_done(environment: Any, msg: Any, **_kw: Any) -> None:
        finished.add(str(msg.data))
        if len(finished) >= environment.parsed_options.agents:
            gevent.spawn_later(FINAL_REPORT_GRACE, runner.quit)

    runner.register_message(names.DONE_MESSAGE, on_done)
