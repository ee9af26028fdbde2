"""Storage filters (costor/store/backends/filters.py): unit tests on a fake clock, the
backend contract through every filter, then whole backups through a faulty backend.

The end-to-end tests run a real backup (Archiver over a real Pool) on a real
LocalBackend made to misbehave by ``tests/support/faults.py``, through the filters ``wrap``
stacks. Each asserts one of the two acceptable outcomes — the backup completed, the pool
checks clean with every byte read, and a restore is identical; or the backup failed
with a CostorError and the pool still checks clean — and that the faults really fired.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import test_contract  # the one conformance suite, run here through every filter
from support.faults import FaultyBackend, content_addressed, first_put_of_each
from support.fixtures import PASSPHRASE, make_pool, tree_digest

from costor.errors import (
    BackendError,
    BackendThrottled,
    BackendTransient,
    CostorError,
    ObjectNotFound,
    StorageFull,
    WriteNotVerified,
)
from costor.store import crypto
from costor.store.backends import Backend, LocalBackend, ObjectInfo
from costor.store.backends.filters import (
    RateLimitedBackend,
    ReadVerifyingBackend,
    RetryingBackend,
    StorageFilters,
    VerifyingBackend,
    content_address,
    find_filter,
    full_jitter,
    wrap,
)
from costor.store.backends.memory import MemoryBackend
from costor.store.backup.walk import Archiver
from costor.store.checker import check
from costor.store.pack import pack_name
from costor.store.pool import Pool
from costor.store.restore.directory import Restorer
from costor.store.snapshot import Snapshot

# --- helpers ---------------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


class Scripted:
    """Forwards to a real backend, but first raises the scripted errors, one per call,
    and records each call's operation and clock time."""

    def __init__(
        self,
        inner: Backend,
        errors: Iterable[Exception] = (),
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.errors = deque(errors)
        self.clock = clock
        self.calls: list[tuple[str, float]] = []

    def _call(self, operation: str) -> None:
        self.calls.append((operation, self.clock()))
        if self.errors:
            raise self.errors.popleft()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._call("put")
        self.inner.put(name, data)

    def get(self, name: str) -> bytes:
        self._call("get")
        return self.inner.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        self._call("get_range")
        return self.inner.get_range(name, offset, length)

    def exists(self, name: str) -> bool:
        self._call("exists")
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._call("list")
        yield from self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self._call("delete")
        self.inner.delete(name)


def transient(reason: str = "connection reset", retry_after: float | None = None) -> Exception:
    return BackendTransient(name="x", reason=reason, retry_after=retry_after)


def throttled(retry_after: float | None = None) -> Exception:
    return BackendThrottled(name="x", reason="503 Slow Down", retry_after=retry_after)


def stored(backend: Backend, name: str, data: bytes) -> Backend:
    backend.put(name, data)
    return backend


def cap(limit: float) -> float:
    """Jitter that always takes the whole cap, so the schedule is exact."""
    return limit


OPERATIONS: dict[str, Callable[[Backend], object]] = {
    "put": lambda b: b.put("a/b", b"data"),
    "get": lambda b: b.get("a/b"),
    "get_range": lambda b: b.get_range("a/b", 1, 2),
    "exists": lambda b: b.exists("a/b"),
    "list": lambda b: list(b.list("a/")),
    "delete": lambda b: b.delete("a/b"),
}


# --- RetryingBackend ---------------------------------------------------------------------


def test_retry_backoff_is_exponential_and_capped() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [transient()] * 6)
    retrying = RetryingBackend(
        inner, attempts=7, base_delay=0.2, max_delay=1.0, sleep=clock.sleep, jitter=cap
    )
    assert retrying.get("a/b") == b"data"
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert len(inner.calls) == 7
    assert retrying.retries == 6


def test_retry_full_jitter_stays_within_the_cap() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [transient()] * 4)
    retrying = RetryingBackend(inner, attempts=5, base_delay=0.5, max_delay=10.0, sleep=clock.sleep)
    assert retrying.jitter is full_jitter
    retrying.get("a/b")
    caps = [0.5, 1.0, 2.0, 4.0]
    assert len(clock.sleeps) == 4
    assert all(0.0 <= slept <= limit for slept, limit in zip(clock.sleeps, caps, strict=True))


@pytest.mark.parametrize("error_kind", [BackendTransient, BackendThrottled])
def test_retry_gives_up_after_the_last_attempt_with_context(error_kind: type) -> None:
    clock = FakeClock()
    errors = [error_kind(name="packs/x", reason=f"failure {n}") for n in range(1, 6)]
    inner = Scripted(MemoryBackend(), errors)
    retrying = RetryingBackend(inner, attempts=5, sleep=clock.sleep, jitter=cap)
    with pytest.raises(error_kind) as raised:
        retrying.put("packs/x", b"data")
    assert "failure 5" in str(raised.value)  # the last error, not the first
    assert "gave up after 5 attempts at put" in str(raised.value)
    assert raised.value.__cause__ is errors[-1]
    assert len(inner.calls) == 5 and len(clock.sleeps) == 4  # no sleep after the last
    assert retrying.gave_up == 1


@pytest.mark.parametrize(
    "error",
    [
        BackendError(name="x", reason="access denied"),
        ObjectNotFound(name="x"),
        StorageFull(name="x", reason="quota"),
        WriteNotVerified(name="x", attempts=3, reason="lost"),
        ValueError("a bug, not a storage failure"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [error])
    retrying = RetryingBackend(inner, sleep=clock.sleep)
    with pytest.raises(type(error)) as raised:
        retrying.get("a/b")
    assert raised.value is error
    assert len(inner.calls) == 1 and clock.sleeps == []


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    clock = FakeClock()
    inner = Scripted(
        stored(MemoryBackend(), "a/b", b"data"),
        [throttled(retry_after=3.0), throttled(retry_after=0.01), transient()],
    )
    retrying = RetryingBackend(inner, base_delay=0.2, max_delay=1.0, sleep=clock.sleep, jitter=cap)
    retrying.get("a/b")
    # 3.0 > 0.2 is honoured (even above max_delay); 0.01 < 0.4 is not; then 0.8.
    assert clock.sleeps == pytest.approx([3.0, 0.4, 0.8])


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_every_operation_is_retried(operation: Callable[[Backend], object]) -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [transient(), throttled()])
    operation(RetryingBackend(inner, sleep=clock.sleep))
    assert len(inner.calls) == 3 and len(clock.sleeps) == 2


def test_a_listing_that_fails_half_way_is_started_again() -> None:
    class FailsMidList(MemoryBackend):
        failures = 1

        def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
            for count, info in enumerate(super().list(prefix)):
                if count == 1 and self.failures:
                    self.failures -= 1
                    raise BackendTransient(name=prefix, reason="connection reset")
                yield info

    inner = FailsMidList()
    for name in ("index/a", "index/b", "index/c"):
        inner.put(name, b"x")
    listed = [info.name for info in RetryingBackend(inner, sleep=FakeClock().sleep).list("index/")]
    assert sorted(listed) == ["index/a", "index/b", "index/c"]  # none twice, none lost


# --- RateLimitedBackend ------------------------------------------------------------------


def test_rate_limit_allows_n_requests_per_period() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), clock=clock)
    limited = RateLimitedBackend(inner, requests=3, per_seconds=1.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limited.get("a/b")
    starts = [when for _, when in inner.calls]
    assert starts == pytest.approx([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    # Sliding window: the 4th request after any request starts a full period later.
    assert all(starts[i + 3] - starts[i] >= 1.0 for i in range(len(starts) - 3))
    assert limited.requests_made == 10
    assert limited.waited == pytest.approx(3.0)


def test_rate_limit_counts_every_operation_and_one_per_list() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), clock=clock)
    for name in ("a/c", "a/d", "a/e"):
        inner.inner.put(name, b"x")
    limited = RateLimitedBackend(inner, requests=2, per_seconds=5.0, clock=clock, sleep=clock.sleep)
    for operation in OPERATIONS.values():
        operation(limited)
    assert limited.requests_made == 6  # the listing of four objects is one request
    assert [when for _, when in inner.calls] == pytest.approx([0, 0, 5, 5, 10, 10])


def test_rate_limit_holds_across_threads() -> None:
    """Real threads, real time: 12 requests at 4 per 0.1 s take at least 0.2 s, and no
    0.1 s window ever holds more than 4 starts."""
    starts: list[float] = []
    lock = threading.Lock()

    class Recording(MemoryBackend):
        def exists(self, name: str) -> bool:
            with lock:
                starts.append(time.monotonic())
            return super().exists(name)

    limited = RateLimitedBackend(Recording(), requests=4, per_seconds=0.1)

    def worker() -> None:
        for _ in range(4):
            limited.exists("a/b")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert len(starts) == 12
    assert starts[-1] - starts[0] >= 0.2 - 1e-3
    assert all(starts[i + 4] - starts[i] >= 0.1 - 1e-3 for i in range(len(starts) - 4))


def test_throttle_holds_every_request_for_retry_after() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [throttled(retry_after=2.5)], clock)
    limited = RateLimitedBackend(
        inner, requests=100, per_seconds=1.0, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(BackendThrottled):  # the error still reaches the caller
        limited.get("a/b")
    assert limited.exists("a/b")  # another operation is held too
    assert inner.calls == [("get", 0.0), ("exists", 2.5)]
    assert limited.throttled == 1 and limited.requests_made == 2


def test_throttle_without_retry_after_holds_from_one_second_doubling_to_a_cap() -> None:
    clock = FakeClock()
    inner = Scripted(stored(MemoryBackend(), "a/b", b"data"), [throttled()] * 5, clock)
    limited = RateLimitedBackend(
        inner, requests=100, per_seconds=1.0, max_hold=5.0, clock=clock, sleep=clock.sleep
    )
    for _ in range(5):
        with pytest.raises(BackendThrottled):
            limited.get("a/b")
    limited.get("a/b")  # succeeds after the last hold: the next hold starts at 1 s again
    assert clock.sleeps == pytest.approx([1.0, 2.0, 4.0, 5.0, 5.0])
    inner.errors.append(throttled())
    with pytest.raises(BackendThrottled):
        limited.get("a/b")
    limited.get("a/b")
    assert clock.sleeps[-1] == pytest.approx(1.0)
    assert limited.throttled == 6


def test_throttles_of_requests_already_in_flight_do_not_double_the_hold() -> None:
    clock = FakeClock()
    both_in_flight = threading.Barrier(2)

    class ThrottlesTogether(MemoryBackend):
        def get(self, name: str) -> bytes:
            both_in_flight.wait(timeout=5)
            raise BackendThrottled(name=name, reason="503 Slow Down")

    limited = RateLimitedBackend(
        ThrottlesTogether(), requests=100, per_seconds=1.0, clock=clock, sleep=clock.sleep
    )
    failures: list[Exception] = []

    def request() -> None:
        try:
            limited.get("a/b")
        except BackendThrottled as error:
            failures.append(error)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(failures) == 2 and limited.throttled == 2
    limited.exists("a/b")
    assert clock.sleeps == pytest.approx([1.0])  # one burst, one 1 s hold, not 2 s


# --- VerifyingBackend --------------------------------------------------------------------


def test_verify_detects_a_lost_write_and_puts_again() -> None:
    faulty = FaultyBackend(MemoryBackend(), lose_puts=1)
    verifying = VerifyingBackend(faulty)
    verifying.put("index/x", b"segment")
    assert faulty.inner.get("index/x") == b"segment"
    assert faulty.lost_puts == 1
    assert verifying.rewrites == 1 and verifying.verified == 1


def test_verify_waits_for_delayed_visibility() -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend(), visibility_delay=0.25, clock=clock)
    verifying = VerifyingBackend(faulty, attempts=4, delay=0.1, sleep=clock.sleep)
    verifying.put("snapshots/s", b"manifest")
    # Checked at 0.1 and 0.2 (not there yet, put again), found at 0.3.
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.1])
    assert faulty.hidden_reads == 2 and faulty.delayed_puts == 1
    assert verifying.rewrites == 2 and verifying.verified == 1


def test_verify_gives_up_when_the_object_appears_too_late() -> None:
    clock = FakeClock()
    faulty = FaultyBackend(MemoryBackend(), visibility_delay=1.0, clock=clock)
    verifying = VerifyingBackend(faulty, attempts=3, delay=0.1, sleep=clock.sleep)
    with pytest.raises(WriteNotVerified) as raised:
        verifying.put("snapshots/s", b"manifest")
    assert raised.value.fields["attempts"] == 3
    assert "not there when read back" in str(raised.value)


def test_verify_raises_write_not_verified_when_never_stored() -> None:
    faulty = FaultyBackend(MemoryBackend(), lose_puts=lambda name: True)
    verifying = VerifyingBackend(faulty, attempts=3)
    with pytest.raises(WriteNotVerified) as raised:
        verifying.put("packs/aa/bb/aabb", b"pack")
    assert "packs/aa/bb/aabb" in str(raised.value) and "3 attempt" in str(raised.value)
    assert faulty.lost_puts == 3  # exactly `attempts` puts, then it stops


def test_verify_detects_different_bytes_read_back() -> None:
    class StoresTruncated(MemoryBackend):
        def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
            super().put(name, bytes(data)[:-1])

    with pytest.raises(WriteNotVerified, match="read back 3 bytes that differ from the 4"):
        VerifyingBackend(StoresTruncated()).put("keys/k", b"slot")


def test_verify_puts_again_after_a_corrupted_read_back() -> None:
    faulty = FaultyBackend(MemoryBackend(), corrupt_reads={"keys/k"})
    verifying = VerifyingBackend(faulty)
    verifying.put("keys/k", b"slot")
    assert faulty.corrupted_reads == 1 and verifying.rewrites == 1


def test_verify_leaves_transient_read_back_errors_to_the_retry_layer() -> None:
    faulty = FaultyBackend(MemoryBackend(), throttle_every=2)  # the read-back is refused
    with pytest.raises(BackendThrottled):
        VerifyingBackend(faulty).put("index/x", b"segment")
    # Through wrap, only the read-back is retried: put, refused get, get — no re-upload.
    faulty = FaultyBackend(MemoryBackend(), throttle_every=2, retry_after=0.0)
    stack = wrap(faulty, verify_writes=True)
    stack.put("index/x", b"segment")
    assert faulty.requests == 3 and faulty.throttled == 1
    verifier = find_filter(stack, VerifyingBackend)
    assert verifier is not None and verifier.rewrites == 0


# --- ReadVerifyingBackend ----------------------------------------------------------------


def _content_named(prefix: str, data: bytes) -> str:
    digest = crypto.object_hash(data)
    return pack_name(digest) if prefix == "packs" else f"{prefix}/{digest}"


@pytest.mark.parametrize("prefix", ["packs", "index", "snapshots"])
def test_read_verify_rereads_a_corrupted_content_addressed_get(prefix: str) -> None:
    data = os.urandom(1000)
    name = _content_named(prefix, data)
    assert content_address(name) == crypto.object_hash(data)
    faulty = FaultyBackend(stored(MemoryBackend(), name, data), corrupt_reads={name})
    reading = ReadVerifyingBackend(faulty)
    assert reading.get(name) == data
    assert faulty.corrupted_reads == 1 and reading.rereads == 1 and reading.mismatches == 0


def test_read_verify_returns_persistently_wrong_bytes_for_the_caller_to_report() -> None:
    data = os.urandom(1000)
    name = _content_named("index", data)
    inner = stored(MemoryBackend(), name, data[:-1])  # damaged on storage
    reading = ReadVerifyingBackend(inner)
    assert reading.get(name) == data[:-1]  # Pool.read_segment raises DataCorruption
    assert reading.rereads == 1 and reading.mismatches == 1


def test_read_verify_leaves_other_names_and_ranges_alone() -> None:
    data = os.urandom(1000)
    pack = _content_named("packs", data)
    faulty = FaultyBackend(
        stored(stored(MemoryBackend(), "keys/k", b"slot"), pack, data),
        corrupt_reads={"keys/k", pack},
    )
    reading = ReadVerifyingBackend(faulty)
    assert reading.get("keys/k") != b"slot"  # not content-addressed: nothing to check
    assert reading.get_range(pack, 0, 1000) != data  # a range: the pool's AEAD checks it
    assert reading.rereads == 0 and faulty.corrupted_reads == 2
    assert content_address("costor-pool.json") is None
    assert content_address("packs/aa/bb/" + "0" * 63) is None


# --- composition and the contract --------------------------------------------------------


def _layers(backend: object) -> list[type]:
    kinds = []
    while backend is not None:
        kinds.append(type(backend))
        backend = getattr(backend, "inner", None)
    return kinds


def test_wrap_stacks_verify_over_read_verify_over_retry_over_rate_limit() -> None:
    inner = MemoryBackend()
    stack = wrap(
        inner, verify_writes=True, verify_reads=True, verify_delay=0.5, rate_limit=(10, 1.0)
    )
    assert _layers(stack) == [
        VerifyingBackend,
        ReadVerifyingBackend,
        RetryingBackend,
        RateLimitedBackend,
        MemoryBackend,
    ]
    assert stack.location == inner.location
    verifier = find_filter(stack, VerifyingBackend)
    limiter = find_filter(stack, RateLimitedBackend)
    assert verifier is not None and verifier.delay == 0.5
    assert limiter is not None and (limiter.requests, limiter.per_seconds) == (10, 1.0)
    assert wrap(inner, retry=False) is inner
    assert _layers(wrap(inner)) == [RetryingBackend, MemoryBackend]
    assert StorageFilters(verify_writes=True).wrap(inner).location == inner.location


def _contract_tests() -> list[Any]:
    """Every test of the conformance suite that takes just a backend."""
    return [
        pytest.param(test, id=name.removeprefix("test_"))
        for name, test in sorted(vars(test_contract).items())
        if name.startswith("test_") and list(inspect.signature(test).parameters) == ["backend"]
    ]


FILTERS: dict[str, Callable[[Backend], Backend]] = {
    "retrying": lambda b: RetryingBackend(b),
    "rate_limited": lambda b: RateLimitedBackend(b, requests=100_000, per_seconds=1.0),
    "verifying": lambda b: VerifyingBackend(b),
    "read_verifying": lambda b: ReadVerifyingBackend(b),
    "all": lambda b: wrap(b, verify_writes=True, verify_reads=True, rate_limit=(100_000, 1.0)),
}


@pytest.mark.parametrize("inner", ["memory", "local"])
@pytest.mark.parametrize("make_filter", FILTERS.values(), ids=FILTERS.keys())
@pytest.mark.parametrize("contract_test", _contract_tests())
def test_filters_keep_the_backend_contract(
    contract_test: Callable[[Backend], None],
    make_filter: Callable[[Backend], Backend],
    inner: str,
    tmp_path: Path,
) -> None:
    backend = MemoryBackend() if inner == "memory" else LocalBackend(tmp_path / "objects")
    contract_test(make_filter(backend))


@pytest.mark.parametrize("make_filter", FILTERS.values(), ids=FILTERS.keys())
def test_filters_refuse_escaping_names_at_once(make_filter: Callable[[Backend], Backend]) -> None:
    with pytest.raises(BackendError, match="invalid object name"):
        make_filter(MemoryBackend()).put("../escape", b"x")


# --- end to end: real backups through a faulty local backend -----------------------------

# Every filter on; a short first back-off keeps the tests fast (the default is 0.2 s).
SAFE = {
    "verify_writes": True,
    "verify_reads": True,
    "rate_limit": (1000, 1.0),
    "retry": True,
    "retry_base_delay": 0.02,
}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "nested" / "deeper").mkdir(parents=True)
    # More than one 4 MiB pack: one pack is stored by a worker mid-backup, the rest
    # (data tail, trees, index segment, snapshot) at the end.
    (root / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    (root / "nested" / "notes.txt").write_text("filters\n" * 500)
    (root / "nested" / "deeper" / "small.bin").write_bytes(os.urandom(10_000))
    (root / "empty").write_bytes(b"")
    return root


def backup_through(stack: Backend, src: Path) -> Snapshot | CostorError:
    try:
        pool = Pool.open(stack, PASSPHRASE)
        pool.load_index()
        return Archiver(pool, client="c", paths=[str(src)]).run()
    except CostorError as error:
        return error


def assert_safe_outcome(pool_path: Path, src: Path, outcome: Snapshot | CostorError) -> None:
    """Completed and restorable, or failed with a CostorError; the pool checks clean."""
    plain = Pool.open(LocalBackend(pool_path), PASSPHRASE)
    report = check(plain, read_data=True)
    assert report.ok, [problem.message for problem in report.problems]
    if isinstance(outcome, Snapshot):
        assert plain.snapshot_ids() == [outcome.id]
        target = pool_path.parent / "restored"
        Restorer(plain).restore(outcome, str(target))
        assert tree_digest(target / str(src).lstrip("/")) == tree_digest(src)
    else:
        assert isinstance(outcome, CostorError) and str(outcome)
        assert plain.snapshot_ids() == []


def _rewrote(stack: Backend, faulty: FaultyBackend) -> None:
    verifier = find_filter(stack, VerifyingBackend)
    assert verifier is not None and verifier.rewrites == faulty.lost_puts


def _reread(stack: Backend, faulty: FaultyBackend) -> None:
    reader = find_filter(stack, ReadVerifyingBackend)
    verifier = find_filter(stack, VerifyingBackend)
    assert reader is not None and reader.rereads == faulty.corrupted_reads
    assert verifier is not None and verifier.rewrites == 0  # healed by re-reading


def _retried_each_throttle(stack: Backend, faulty: FaultyBackend) -> None:
    limiter = find_filter(stack, RateLimitedBackend)
    retrier = find_filter(stack, RetryingBackend)
    assert limiter is not None and limiter.throttled == faulty.throttled
    assert retrier is not None and retrier.retries == faulty.throttled


def _left_temporaries_only(stack: Backend, faulty: FaultyBackend) -> None:
    pool_dir = Path(faulty.location)
    assert faulty.temporaries and all((pool_dir / name).is_file() for name in faulty.temporaries)
    listed = [info.name for info in LocalBackend(pool_dir).list("")]
    assert not any(".tmp-" in name for name in listed)
    assert LocalBackend(pool_dir).cleanup_temporaries() == len(faulty.temporaries)


@dataclass
class FaultCase:
    faults: Callable[[], dict[str, Any]]  # a factory: predicates like first_put_of_each keep state
    injected: str  # the FaultyBackend counter that proves the fault fired
    expect: type  # Snapshot, or the CostorError the backup must fail with
    filters: dict[str, Any] = field(default_factory=lambda: dict(SAFE))
    also: Callable[[Backend, FaultyBackend], None] | None = None


FAULT_CASES = {
    "lost_put": FaultCase(
        lambda: {"lose_puts": first_put_of_each(content_addressed)},
        "lost_puts",
        Snapshot,
        also=_rewrote,
    ),
    "lost_put_forever": FaultCase(
        lambda: {"lose_puts": lambda name: name.startswith("packs/")}, "lost_puts", WriteNotVerified
    ),
    "delayed_visibility": FaultCase(
        lambda: {"visibility_delay": 0.08},
        "hidden_reads",
        Snapshot,
        filters={**SAFE, "verify_delay": 0.05},
    ),
    "corrupted_get_once": FaultCase(
        lambda: {"corrupt_reads": content_addressed}, "corrupted_reads", Snapshot, also=_reread
    ),
    "throttle_every_3rd": FaultCase(
        lambda: {"throttle_every": 3, "retry_after": 0.02},
        "throttled",
        Snapshot,
        also=_retried_each_throttle,
    ),
    "throttled_always": FaultCase(
        lambda: {"throttle_every": 1, "retry_after": 0.01}, "throttled", BackendThrottled
    ),
    "reset_before_upload": FaultCase(
        lambda: {"reset_puts": first_put_of_each(content_addressed)}, "resets", Snapshot
    ),
    "reset_mid_upload": FaultCase(
        lambda: {
            "reset_puts": first_put_of_each(content_addressed),
            "reset_leaves_temporary": True,
        },
        "resets",
        Snapshot,
        also=_left_temporaries_only,
    ),
    "reset_without_retry": FaultCase(
        lambda: {"reset_puts": 1}, "resets", BackendTransient, filters={**SAFE, "retry": False}
    ),
}


@pytest.mark.parametrize("case", FAULT_CASES.values(), ids=FAULT_CASES.keys())
def test_backup_through_faults_is_complete_or_fails_cleanly(
    case: FaultCase, tmp_path: Path, src: Path
) -> None:
    pool_path = tmp_path / "pool"
    make_pool(pool_path)
    faulty = FaultyBackend(LocalBackend(pool_path), **case.faults())
    stack = wrap(faulty, **case.filters)
    outcome = backup_through(stack, src)
    assert getattr(faulty, case.injected) > 0, "the fault was never injected"
    assert isinstance(outcome, case.expect), outcome
    assert_safe_outcome(pool_path, src, outcome)
    if case.also is not None:
        case.also(stack, faulty)


def test_without_write_verification_a_lost_put_damages_the_pool(tmp_path: Path, src: Path) -> None:
    """The control: the same lost PUTs without VerifyingBackend go unnoticed by the
    backup and leave a snapshot whose packs are missing — the faults are real."""
    pool_path = tmp_path / "pool"
    make_pool(pool_path)
    # The first put is the data pack a worker stores when it fills (5 MiB > 4 MiB).
    faulty = FaultyBackend(LocalBackend(pool_path), lose_puts=1)
    outcome = backup_through(wrap(faulty, retry=True), src)
    assert isinstance(outcome, Snapshot) and faulty.lost_puts == 1
    report = check(Pool.open(LocalBackend(pool_path), PASSPHRASE), read_data=True)
    assert [problem.kind for problem in report.problems] == ["missing_pack"]
    assert report.problems[0].affected_count >= 1  # big.bin names it


def _backed_up(tmp_path: Path, src: Path) -> tuple[Path, Snapshot]:
    pool_path = tmp_path / "pool"
    pool = make_pool(pool_path)
    return pool_path, Archiver(pool, client="c", paths=[str(src)]).run()


def test_corrupted_ranged_read_is_read_again_and_the_restore_completes(
    tmp_path: Path, src: Path
) -> None:
    """Restores read blobs by range; no filter can check a range, but the pool checks
    each blob (AEAD and id) and reads a failing one once more, alone: a transfer
    corrupted once is healed, and damage that persists raises DataCorruption (see
    tests/store/test_backup_restore.py)."""
    pool_path, snapshot = _backed_up(tmp_path, src)
    faulty = FaultyBackend(LocalBackend(pool_path), corrupt_reads=lambda n: n.startswith("packs/"))
    pool = Pool.open(wrap(faulty, verify_reads=True), PASSPHRASE)
    pool.load_index()
    target = tmp_path / "restored"
    Restorer(pool).restore(snapshot, str(target))
    assert faulty.corrupted_reads >= 1
    assert tree_digest(target / str(src).lstrip("/")) == tree_digest(src)
    assert check(Pool.open(LocalBackend(pool_path), PASSPHRASE), read_data=True).ok


def test_check_through_corrupted_whole_reads_rereads_and_passes(tmp_path: Path, src: Path) -> None:
    """``check --read-data`` reads whole packs with ``get``: a corrupted transfer is
    re-read by ReadVerifyingBackend instead of being reported as a damaged pack."""
    pool_path, _ = _backed_up(tmp_path, src)
    faulty = FaultyBackend(LocalBackend(pool_path), corrupt_reads=content_addressed)
    stack = wrap(faulty, verify_reads=True)
    report = check(Pool.open(stack, PASSPHRASE), read_data=True)
    assert report.ok, [problem.message for problem in report.problems]
    reader = find_filter(stack, ReadVerifyingBackend)
    assert faulty.corrupted_reads >= 3  # index segment, snapshot, every pack
    assert reader is not None and reader.rereads == faulty.corrupted_reads
