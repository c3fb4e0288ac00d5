"""Named failpoints for fault-injection tests; free when unset.

``LEASESTORE_FAILPOINTS="after_claim_update:stop,recover_update:raise"`` arms
them. Actions: ``sleep(SECONDS)``, ``stop`` (SIGSTOP this process), ``kill``
(SIGKILL this process), ``raise`` (raise :class:`FailpointError`).
"""

from __future__ import annotations

import os
import signal
import time

ENV = "LEASESTORE_FAILPOINTS"


class FailpointError(RuntimeError):
    """Raised by a failpoint armed with ``raise``."""


def _parse(raw: str) -> dict[str, str]:
    armed: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, action = item.partition(":")
        armed[name.strip()] = action.strip() or "raise"
    return armed


_armed: dict[str, str] = _parse(os.environ.get(ENV, ""))


def arm(spec: str) -> None:
    """Replace the armed failpoints (tests in the same process)."""
    global _armed
    _armed = _parse(spec)


def failpoint(name: str) -> None:
    if not _armed:
        return
    action = _armed.get(name)
    if action is None:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep(") and action.endswith(")"):
        time.sleep(float(action[6:-1]))
