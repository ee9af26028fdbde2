"""A fault-injecting backend for tests: wraps a real backend (memory, local, S3) and
makes it misbehave the ways object storage does, deterministically.

Each fault is chosen by a count ("the first N puts") or a predicate on the object name,
never by chance, and every fault injected is counted so a test can assert that the
faults really happened (a fault test whose faults never fired proves nothing).

Faults, in the order a request meets them:

1. ``throttle_every=k`` — every k-th request (any operation; ``list`` counts one) is
   refused with :class:`BackendThrottled` (an S3 ``503 Slow Down``) carrying
   ``retry_after``; nothing is done.
2. ``reset_puts`` — the connection drops mid-upload: :class:`BackendTransient` is raised
   after storing nothing, or (``reset_leaves_temporary``) after storing the first half
   of the data under a temporary name ``<name>.tmp-reset-<n>`` — never a partial object
   under the real name, as real PUTs are atomic. ``LocalBackend`` ignores such names in
   ``list`` and removes them in ``cleanup_temporaries``, as it does for its own
   killed writers (an in-memory backend would list them).
3. ``lose_puts`` — the put returns success and stores nothing.
4. ``visibility_delay`` — the put is stored, but reads through this wrapper (``get``,
   ``get_range``, ``exists``, ``list``) do not see the name until ``visibility_delay``
   seconds after its *first* put (putting it again does not restart the delay), as on
   an eventually consistent store. ``delay_visibility_of`` picks the names (all if
   None). The inner backend has the object at once.
5. ``corrupt_reads`` — the first read (``get`` or ``get_range``) of each chosen name
   returns its bytes with one byte flipped (same length); later reads are correct.

``lose_puts`` and ``reset_puts`` take a count (the first N puts that reach that step) or
a predicate on the name; :func:`first_put_of_each` makes a predicate that is true once
per name. ``corrupt_reads`` takes a set of names or a predicate.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Collection, Iterator

from costor.errors import BackendThrottled, BackendTransient, ObjectNotFound
from costor.store.backends.base import Backend, ObjectInfo

NamePredicate = Callable[[str], bool]


def first_put_of_each(matching: NamePredicate | None = None) -> NamePredicate:
    """A predicate true the first time it sees each (matching) name, false after."""
    seen: set[str] = set()
    lock = threading.Lock()

    def predicate(name: str) -> bool:
        if matching is not None and not matching(name):
            return False
        with lock:
            if name in seen:
                return False
            seen.add(name)
            return True

    return predicate


def content_addressed(name: str) -> bool:
    """Packs, index segments and snapshots (not key slots or the identity file)."""
    return name.startswith(("packs/", "index/", "snapshots/"))


class _Selector:
    """ "The first N calls" or "names the predicate accepts", thread-safe."""

    def __init__(self, spec: int | NamePredicate) -> None:
        self._remaining = spec if isinstance(spec, int) else 0
        self._predicate = None if isinstance(spec, int) else spec
        self._lock = threading.Lock()

    def __call__(self, name: str) -> bool:
        if self._predicate is not None:
            return self._predicate(name)
        with self._lock:
            if self._remaining > 0:
                self._remaining -= 1
                return True
            return False


class FaultyBackend:
    """See the module docstring. Counters: ``requests``, ``throttled``, ``resets``,
    ``temporaries`` (names left by resets), ``lost_puts``, ``delayed_puts``,
    ``hidden_reads`` (reads refused because the name was not yet visible),
    ``corrupted_reads``."""

    def __init__(
        self,
        inner: Backend,
        *,
        throttle_every: int = 0,
        retry_after: float | None = None,
        reset_puts: int | NamePredicate = 0,
        reset_leaves_temporary: bool = False,
        lose_puts: int | NamePredicate = 0,
        visibility_delay: float = 0.0,
        delay_visibility_of: NamePredicate | None = None,
        corrupt_reads: Collection[str] | NamePredicate = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.throttle_every = throttle_every
        self.retry_after = retry_after
        self._reset = _Selector(reset_puts)
        self.reset_leaves_temporary = reset_leaves_temporary
        self._lose = _Selector(lose_puts)
        self.visibility_delay = visibility_delay
        self.delay_visibility_of = delay_visibility_of
        if callable(corrupt_reads):
            self._corrupt: NamePredicate = corrupt_reads
        else:
            names = frozenset(corrupt_reads)
            self._corrupt = names.__contains__
        self.clock = clock
        self._lock = threading.Lock()
        self._visible_at: dict[str, float] = {}
        self._corrupted: set[str] = set()
        self.requests = 0
        self.throttled = 0
        self.resets = 0
        self.temporaries: builtins.list[str] = []
        self.lost_puts = 0
        self.delayed_puts = 0
        self.hidden_reads = 0
        self.corrupted_reads = 0

    # --- the faults -----------------------------------------------------------------

    def _request(self, name: str) -> None:
        """Count a request; refuse every k-th one as a 503."""
        with self._lock:
            self.requests += 1
            refuse = self.throttle_every > 0 and self.requests % self.throttle_every == 0
            if refuse:
                self.throttled += 1
        if refuse:
            raise BackendThrottled(
                name=name,
                reason="503 Slow Down (injected)",
                retry_after=self.retry_after,
            )

    def _hidden(self, name: str) -> bool:
        with self._lock:
            visible_at = self._visible_at.get(name)
            if visible_at is None:
                return False
            if self.clock() >= visible_at:
                del self._visible_at[name]
                return False
            self.hidden_reads += 1
            return True

    def _maybe_corrupt(self, name: str, data: bytes) -> bytes:
        if not data or not self._corrupt(name):
            return data
        with self._lock:
            if name in self._corrupted:
                return data
            self._corrupted.add(name)
            self.corrupted_reads += 1
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0xFF
        return bytes(damaged)

    # --- the Backend protocol -------------------------------------------------------

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._request(name)
        if self._reset(name):
            with self._lock:
                self.resets += 1
                serial = self.resets
            sent = len(data) // 2
            if self.reset_leaves_temporary:
                temporary = f"{name}.tmp-reset-{serial}"
                self.inner.put(temporary, bytes(memoryview(data)[:sent]))
                with self._lock:
                    self.temporaries.append(temporary)
            raise BackendTransient(
                name=name,
                reason=f"connection reset by peer after {sent} of {len(data)} bytes (injected)",
            )
        if self._lose(name):
            with self._lock:
                self.lost_puts += 1
            return
        self.inner.put(name, data)
        if self.visibility_delay > 0 and (
            self.delay_visibility_of is None or self.delay_visibility_of(name)
        ):
            with self._lock:
                if name not in self._visible_at:
                    self._visible_at[name] = self.clock() + self.visibility_delay
                    self.delayed_puts += 1

    def get(self, name: str) -> bytes:
        self._request(name)
        if self._hidden(name):
            raise ObjectNotFound(name=name)
        return self._maybe_corrupt(name, self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self._request(name)
        if self._hidden(name):
            raise ObjectNotFound(name=name)
        return self._maybe_corrupt(name, self.inner.get_range(name, offset, length))

    def exists(self, name: str) -> bool:
        self._request(name)
        return not self._hidden(name) and self.inner.exists(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._request(prefix or "(all)")
        for info in self.inner.list(prefix):
            if not self._hidden(info.name):
                yield info

    def delete(self, name: str) -> None:
        self._request(name)
        self.inner.delete(name)
        with self._lock:
            self._visible_at.pop(name, None)
