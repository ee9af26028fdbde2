"""The one door from HTTP requests to the use cases: a single :class:`Context`, used by
one request at a time.

Why one at a time: a :class:`Context` caches opened pools (their keys cost an argon2id
derivation each) and the applied configuration, and is not thread-safe; FastAPI runs
sync routes on a thread pool. A pool of contexts can replace the lock once a benchmark
(issue 20, ``bench/api.py``) shows requests waiting on it.

Why the context keeps each pool's index (``keep_indexes``): browsing a snapshot reads
trees, and finding a tree's blob needs the pool's index; without the cache every request
read every index segment again (a 100,000-file pool: ~60 ms of a 72 ms browse, measured
with py-spy on ``bench/api.py``'s data set). With it a request reads only the segments
written since, and copies the rest (a dict copy, a few ms).

Why the first request freezes the garbage collector's view (:func:`gc.freeze`): a full
collection walks every object the process holds, ~120,000 once FastAPI, pydantic,
SQLAlchemy and the use cases are imported: 35-45 ms, which was most of the API's p99
(``bench/api.py``'s data set, by hand: listing p99 52 ms, 18-23 ms with the collector
off). Those objects live as long as the process; frozen, the collector no longer walks
them. It is done once, at the first request (everything is imported and built by then,
and no request's garbage exists yet), after a collection so nothing dead is frozen.

Why the daemon takes the gate before it forks a job (:meth:`Gate.paused`): the forked
child must not inherit a database connection in use, nor an SQLite connection at all
(SQLite's account of its locks is per process memory that fork copies: see
``costor/daemon/server.py`` ``_fork``). So on SQLite the gate closes its connections
each time a request leaves it, and while the daemon forks no request is inside.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from costor.ops.context import Context

RELOAD_EVERY = 2.0  # seconds: an apply shows in the API this soon (a reload is ~ms)


class Gate:
    def __init__(self, inventory_path: str | Path) -> None:
        self.inventory_path = Path(inventory_path)
        self._lock = threading.Lock()
        self._ctx: Context | None = None
        self._loaded_at = 0.0

    @contextmanager
    def use(
        self, *, actor: str = "system", source: str | None = None, request_id: str | None = None
    ) -> Iterator[Context]:
        """The context, for one request's use case, naming who asks as the audit log
        will (``token:ID``, the caller's address, the request's id); the applied
        configuration is read again when older than :data:`RELOAD_EVERY`."""
        with self._lock:
            now = time.monotonic()
            if self._ctx is None:
                self._ctx = Context(self.inventory_path, keep_indexes=True)
                self._loaded_at = now
                gc.collect()
                gc.freeze()  # the process's long-lived objects, out of the collector's walk
            elif now - self._loaded_at > RELOAD_EVERY:
                self._ctx.reload()
                self._loaded_at = now
            self._ctx.actor, self._ctx.source, self._ctx.request_id = actor, source, request_id
            try:
                yield self._ctx
            finally:
                if self._ctx.database_url.startswith("sqlite"):
                    self._ctx.engine.dispose()  # no SQLite connection is kept (see above)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No request uses the context meanwhile (the daemon forks a job inside)."""
        with self._lock:
            yield
