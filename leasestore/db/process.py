"""This process's id, kept current across ``fork()`` without a system call per look.

Pooled connections and the SQLite write gate must never be used by a forked
child (a descriptor or socket inherited from the parent is shared with it).
They check the process id on every operation; ``os.getpid()`` is a system call
each time, which showed up as several percent of a SQLite claim+release cycle,
so the id is read once and refreshed by a fork hook instead. Read it as
``process.current`` (a module attribute: a function call per look cost as much
again on that path).
"""

from __future__ import annotations

import os

current: int = os.getpid()


def _forked() -> None:
    global current
    current = os.getpid()


os.register_at_fork(after_in_child=_forked)
