"""A running job's progress, kept where every ``costor serve`` sees it: the ``progress``
column of its row in the state (``costor jobs --json``, ``GET /api/v1/jobs``, the event
stream of costor/server/events.py).

Why a flusher thread and not a write per report: the engine calls :meth:`advance` from
its worker threads once per chunk (thousands of times a second on a fast disk); a
database write each time would slow the job down and load the database. The counters
are summed under a lock (a few hundred nanoseconds) and one thread writes the document
at most every :data:`FLUSH_EVERY` seconds, only when it changed, and once at the end.

The document (:meth:`JobProgress.document`)::

    {"phase": "transferring",   # see below
     "files": 1200, "files_total": 5000,      # files done / in all (null: not known)
     "bytes": 73400320, "bytes_total": 209715200,
     "rate_bps": 12582912.0,    # smoothed bytes/s; 0 when nothing advanced lately
     "files_per_s": 210.5,      # smoothed files/s
     "eta_s": 11.0,             # seconds left (null: unknown); never 0 while work remains
     "percent": 35.0,           # of the bytes (else the files) once a total is known
     "elapsed_s": 6.2, "warnings": 0,
     "updated_at": "2026-12-07T16:30:00.123456+00:00"}

Phases: a backup is ``scanning`` until its first file data is reported (opening the
pool, connecting to the host, walking the tree), then ``transferring``; a restore is
``restoring``, a check ``checking``, a prune ``pruning``, other kinds their name; every
kind is ``finishing`` once the engine said it is done (storing the snapshot, recording
the outcome), and ``done`` when the job succeeded (its last document).

The ETA (:func:`estimate_eta`) starts from the previous successful job of the same
kind and target (its duration, and its bytes when it reported them: :class:`Seed`),
and moves to the job's own smoothed rate (:class:`Rate`) over its first
:data:`WARMUP_S` seconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from costor.ops.progress import Progress
from costor.util.log import JOB, get_logger

logger = get_logger(JOB)

FLUSH_EVERY = 0.5  # seconds between writes of a changed document (the issue: ~2/s)
HALF_LIFE_S = 3.0  # the smoothed rate forgets half of what it knew in this time
STALL_AFTER_S = 5.0  # no advance for this long: the rate is 0 (a stalled host, a lock)
WARMUP_S = 10.0  # the live rate weighs fully after this long (before: blends the seed)
ETA_FLOOR_S = 1.0  # the least ETA shown while work remains: never "0 s" before the end


@dataclass(frozen=True)
class Seed:
    """What the previous successful job of the same kind and target took: its duration
    and, when it reported them, its bytes and files."""

    duration_s: float
    bytes: int | None = None
    files: int | None = None

    @classmethod
    def from_previous(cls, duration_s: float, progress: dict[str, Any] | None) -> Seed:
        """From :func:`costor.db.queue.previous_run`'s answer."""
        doc = progress or {}

        def count(key: str) -> int | None:
            value = doc.get(key)
            return int(value) if isinstance(value, int | float) and value > 0 else None

        return cls(max(0.0, duration_s), count("bytes"), count("files"))


class Rate:
    """An exponentially weighted moving average of a counter's rate, sampled by the
    flusher (not per advance): each sample's weight is ``1 - 0.5 ** (dt / half_life)``,
    so irregular sampling weighs time, not calls. Not thread-safe (one flusher)."""

    def __init__(self, half_life_s: float = HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self.value: float | None = None  # None: fewer than two samples
        self._last: tuple[float, float] | None = None  # (time, count) of the last sample

    def sample(self, now: float, count: float) -> float | None:
        """Take the counter's value ``count`` at time ``now``; returns the smoothed rate."""
        if self._last is None:
            self._last = (now, count)
            return self.value
        then, before = self._last
        dt = now - then
        if dt <= 0:
            return self.value
        instant = max(0.0, count - before) / dt
        if self.value is None:
            self.value = instant
        else:
            weight = 1.0 - 0.5 ** (dt / self.half_life_s)
            self.value += weight * (instant - self.value)
        self._last = (now, count)
        return self.value


def estimate_eta(
    *,
    elapsed_s: float,
    done: float,
    total: float | None,
    rate: float | None,
    seed: Seed | None = None,
    seed_amount: float | None = None,
    finished: bool = False,
) -> float | None:
    """Seconds left of a job that did ``done`` units (bytes, else files) of ``total``
    (None: not known) in ``elapsed_s``, at the smoothed ``rate`` (units/s; 0: stalled;
    None: not measured yet). ``seed``: the previous run; ``seed_amount``: the units it
    did (its bytes or files, to match ``done``; None: unknown).

    - The previous run's own rate (``seed_amount / seed.duration_s``) applied to the work
      left, or without it what is left of its duration, is the estimate to start from;
      the live ``rate`` takes over linearly over :data:`WARMUP_S` seconds.
    - No total: the previous run's amount stands in for it (the job is likely the same
      size as last time).
    - Stalled (``rate`` 0) or not measured: the seed alone, else None.
    - Never below :data:`ETA_FLOOR_S` while work remains; 0 only when ``finished``.
    - None when nothing is known, or when the only estimate is the previous run and the
      job already ran longer, or did more (it is no guide any more)."""
    if finished:
        return 0.0
    if total is None and seed_amount:
        total = seed_amount if done < seed_amount else None
    left = max(0.0, total - done) if total is not None else None

    live = left / rate if left is not None and rate else None

    from_seed: float | None = None
    if seed is not None and seed.duration_s > 0:
        if left is not None and seed_amount:
            from_seed = left / (seed_amount / seed.duration_s)
        elif seed_amount and done >= seed_amount:
            pass  # more than the whole of last time: its duration is no guide either
        elif seed.duration_s > elapsed_s:
            from_seed = seed.duration_s - elapsed_s

    if live is not None and from_seed is not None:
        weight = min(1.0, max(0.0, elapsed_s) / WARMUP_S)
        eta = weight * live + (1.0 - weight) * from_seed
    elif live is not None:
        eta = live
    elif from_seed is not None:
        eta = from_seed
    else:
        return None
    if not math.isfinite(eta):
        return None
    return round(max(ETA_FLOOR_S, eta), 1)


class JobProgress(Progress):
    """The engine's :class:`Progress` for one job, written through ``write`` (a
    document: :meth:`document`) by a flusher thread. Thread-safe: the engine reports
    from many threads; ``write`` is called from the flusher only, or from the thread that
    calls :meth:`finish`, never both at once.

    ``phase``: the phase to start in; ``data_phase``: the one the first reported bytes
    move it to (a backup: scanning → transferring). :meth:`set_phase` sets one
    explicitly. A write that fails is said once in the job's log and does not stop the
    job (the next write tries again)."""

    def __init__(
        self,
        write: Callable[[dict[str, Any]], object],
        *,
        phase: str,
        data_phase: str | None = None,
        seed: Seed | None = None,
        every: float = FLUSH_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._data_phase = data_phase
        self.seed = seed
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._phase = phase
        self._files = 0
        self._bytes = 0
        self._files_total: int | None = None
        self._bytes_total: int | None = None
        self._warnings = 0
        self._started = clock()
        self._last_advance = self._started
        self._byte_rate = Rate()
        self._file_rate = Rate()
        self._last_written: dict[str, Any] | None = None
        self._finished = False
        self._succeeded = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._failing: str | None = None
        self.writes = 0  # documents written (for tests and the benchmark)

    # --- the engine's side (any thread) ------------------------------------------

    def set_total(self, files: int, size: int) -> None:
        with self._lock:
            self._files_total, self._bytes_total = max(0, files), max(0, size)

    def advance(self, files: int = 0, size: int = 0) -> None:
        with self._lock:
            self._files += files
            self._bytes += size
            self._last_advance = self._clock()
            if size and self._data_phase is not None:
                self._phase, self._data_phase = self._data_phase, None

    def warning(self, path: str, message: str) -> None:
        with self._lock:
            self._warnings += 1

    def close(self) -> None:
        """The engine's work is over; what follows is recording it."""
        self.set_phase("finishing")

    # --- the job's side -----------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase, self._data_phase = phase, None

    def start(self) -> JobProgress:
        """Write the first document now and start the flusher."""
        self.flush()
        self._flusher = threading.Thread(target=self._run, name="job-progress", daemon=True)
        self._flusher.start()
        return self

    def finish(self, *, succeeded: bool) -> None:
        """Stop the flusher and write the last document: phase ``done`` with an ETA of 0
        when the job succeeded; otherwise its phase as it was, rate 0 and no ETA."""
        self._stop.set()
        flusher = self._flusher
        # Not started yet when a cancel (SIGTERM) came between its making and its start.
        if (
            flusher is not None
            and flusher.ident is not None
            and flusher is not threading.current_thread()
        ):
            flusher.join()
        with self._lock:
            self._finished = True
            self._succeeded = succeeded
            if succeeded:
                self._phase = "done"
        self.flush(force=True)

    def flush(self, *, force: bool = False) -> bool:
        """Write the document if it changed since the last write (``force``: anyway).
        Returns whether it wrote."""
        with self._write_lock:
            doc = self.document()
            if not force and self._last_written is not None and _same(doc, self._last_written):
                return False
            try:
                self._write(doc)
            except Exception as error:  # noqa: BLE001  (progress never fails a job)
                if repr(error) != self._failing:
                    self._failing = repr(error)
                    logger.warning(f"progress not recorded: {self._failing}")
                return False
            self._failing = None
            self._last_written = doc
            self.writes += 1
            return True

    def document(self) -> dict[str, Any]:
        """The progress as it stands (samples the smoothed rates: call from one thread
        at a time — :meth:`flush` does)."""
        now = self._clock()
        with self._lock:
            phase, files, size = self._phase, self._files, self._bytes
            files_total, bytes_total = self._files_total, self._bytes_total
            warnings, last_advance = self._warnings, self._last_advance
            finished, succeeded = self._finished, self._succeeded
        elapsed = now - self._started
        byte_rate = self._byte_rate.sample(now, size)
        file_rate = self._file_rate.sample(now, files)
        stalled = finished or now - last_advance >= STALL_AFTER_S
        if stalled:
            byte_rate = 0.0 if byte_rate is not None else None
            file_rate = 0.0 if file_rate is not None else None
        seed = self.seed
        # Bytes when the job counts them (a total, or bytes seen), else files.
        by_bytes = bool(bytes_total) or size > 0 or (not files_total and not files)
        if by_bytes:
            done, total, rate = size, bytes_total or None, byte_rate
            seed_amount = seed.bytes if seed else None
        else:
            done, total, rate = files, files_total or None, file_rate
            seed_amount = seed.files if seed else None
        eta = (
            None
            if finished and not succeeded
            else estimate_eta(
                elapsed_s=elapsed,
                done=done,
                total=total,
                rate=rate,
                seed=seed,
                seed_amount=seed_amount,
                finished=succeeded,
            )
        )
        percent = None
        if succeeded:
            percent = 100.0
        elif total:
            percent = round(min(100.0, 100.0 * done / total), 1)
        return {
            "phase": phase,
            "files": files,
            "files_total": files_total,
            "bytes": size,
            "bytes_total": bytes_total,
            "rate_bps": round(byte_rate, 1) if byte_rate is not None else None,
            "files_per_s": round(file_rate, 2) if file_rate is not None else None,
            "eta_s": eta,
            "percent": percent,
            "elapsed_s": round(elapsed, 1),
            "warnings": warnings,
            "updated_at": datetime.now(UTC).isoformat(),
        }

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.flush()


# What a reader needs to see change; the time stamps alone are no news.
_CLOCKS = ("updated_at", "elapsed_s")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[key] == b[key] for key in a if key not in _CLOCKS)


def phases_of(kind: str) -> tuple[str, str | None]:
    """A job kind's first phase, and the one its first bytes move it to (None: none)."""
    return {
        "backup": ("scanning", "transferring"),
        "restore": ("restoring", None),
        "check": ("checking", None),
        "prune": ("pruning", None),
    }.get(kind, (kind, None))


__all__ = [
    "ETA_FLOOR_S",
    "FLUSH_EVERY",
    "JobProgress",
    "Rate",
    "Seed",
    "estimate_eta",
    "phases_of",
]
