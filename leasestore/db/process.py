"""This process's id, kept current across ``fork()`` without a system call per look.

Pooled connections and the SQLite write gate must never be used by a forked
child (a descriptor or socket inherited from the parent is shared with it).
They check the process id on every operation; ``os.getpid()`` is a system call
each time, which showed up as several percent of a SQLite claim+release cycle,
so the id is read once and refreshed by a fork hook instead.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """The id of the running process (as ``os.getpid()``, without the system call)."""
    return _pid
