"""How many threads BLAKE3 may use here, without hanging a forked process.

blake3's multi-threaded mode (``max_threads=AUTO``) runs on Rayon's global thread pool,
started in the process that first asks for it. Its threads do not survive ``fork``: a
child that hashes in that mode waits forever for threads that exist only in its parent
(a ``costor serve`` job hung so in ``Pool.flush`` once the daemon had loaded an index).
So:

- a process uses threads only if the pool is its own (started here, or not started);
  the child of a process that started one hashes on one thread;
- a process that forks workers (``costor serve``) calls :func:`keep_fork_safe` first:
  it hashes on one thread itself, never starts the pool, and its children start their
  own and keep full speed.
"""

from __future__ import annotations

import os

import blake3

_NONE, _REFUSED = 0, -1
_owner = _NONE  # the PID whose Rayon pool exists; _NONE: no pool yet; _REFUSED: never


def max_threads() -> int:
    """``max_threads`` for a ``blake3.blake3(...)`` call made now, in this process."""
    global _owner
    pid = os.getpid()
    if _owner == _NONE:
        _owner = pid
    return int(blake3.blake3.AUTO) if _owner == pid else 1


def keep_fork_safe() -> None:
    """This process forks workers that hash: it does not start the thread pool itself."""
    global _owner
    if _owner == _NONE:
        _owner = _REFUSED


def _in_child() -> None:
    global _owner
    if _owner == _REFUSED:
        _owner = _NONE  # the parent never started a pool: the child may start its own


os.register_at_fork(after_in_child=_in_child)
