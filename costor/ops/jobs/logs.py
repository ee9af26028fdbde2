"""A job's log: what its run logs, kept in the state database (costor/db/joblogs.py)
so that ``costor jobs log ID``, the Admin API (``GET /api/v1/jobs/{id}/log``) and any
instance sharing the state can read it while it runs and after.

:func:`capture_job_log` is installed by the runner (costor/ops/jobs/runner.py) for the
job's duration: every record of the ``costor`` loggers at INFO or above, the job's start
and end lines included, becomes one numbered line per line of its text (a report
printed as indented JSON is several lines). Records are buffered and written by a thread
of their own every :data:`FLUSH_EVERY` seconds, and when the job ends: a record logged
while the job holds a write transaction (SQLite admits one writer) must not wait for
that transaction, which would be waiting for it. The runner writes the outcome and
report before it records the job's end, so a reader who sees the job ended has its
whole run's log. The job's log file under
``costor serve`` (``STATE_DIR/logs/job-ID.log``) still gets everything, tracebacks of
a crashed child included; the database keeps the newest lines of each job
(:data:`costor.db.joblogs.MAX_LINES`).

:func:`job_log` reads it: the lines after a sequence number, so a reader following a
running job asks again with the last number it saw.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from costor.db import joblogs
from costor.db import queue as jobs
from costor.errors import JobNotFound, UsageError
from costor.util.log import JOB, ROOT

if TYPE_CHECKING:
    from costor.db.models import JobLogLineRow
    from costor.db.session import Engine
    from costor.ops.context import Context

FLUSH_EVERY = 0.5  # seconds between writes of the buffered lines
RUNNING = ("queued", "running")  # a job in these states may log more
MAX_SEQ = joblogs.MAX_SEQ  # the largest line number (what ``after`` may be)


class JobLogHandler(logging.Handler):
    """Buffers the records of one job's run and writes them to its log in the state.

    Thread-safe (logging's lock guards :meth:`emit`; the buffer has a lock of its own).
    The buffer holds at most :data:`~costor.db.joblogs.MAX_LINES` lines: if the state
    cannot be written for a while, the oldest are dropped, as the table would drop
    them."""

    def __init__(self, engine: Engine, job_id: int) -> None:
        super().__init__(level=logging.INFO)
        self.engine = engine
        self.job_id = job_id
        self._pending: list[joblogs.LogLine] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one write at a time: numbering is by the last
        self._stop = threading.Event()
        self._failing: str | None = None
        self._writer = threading.Thread(target=self._run, name=f"job-{job_id}-log", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: BLE001  (logging's own rule: a bad record is reported, not raised)
            self.handleError(record)
            return
        when = datetime.fromtimestamp(record.created, UTC)
        lines = [
            joblogs.LogLine(when, record.levelname, line) for line in text.splitlines() or [""]
        ]
        with self._pending_lock:
            self._pending.extend(lines)
            del self._pending[: max(0, len(self._pending) - joblogs.MAX_LINES)]

    def flush(self) -> None:
        """Write what is buffered now (a failure is said once on stderr, the job's log
        file, and the lines are kept for the next try)."""
        with self._write_lock:
            with self._pending_lock:
                lines, self._pending = self._pending, []
            if not lines:
                return
            try:
                joblogs.append_lines(self.engine, self.job_id, lines)
            except Exception as error:  # noqa: BLE001  (retried at the next flush)
                with self._pending_lock:
                    self._pending[:0] = lines
                    del self._pending[: max(0, len(self._pending) - joblogs.MAX_LINES)]
                if repr(error) != self._failing:
                    self._failing = repr(error)
                    # Not through logging: this handler would hear it again.
                    print(
                        f"costor: job {self.job_id}: its log was not written to the state: "
                        f"{error!r}",
                        file=sys.stderr,
                        flush=True,
                    )
                return
            self._failing = None

    def close(self) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join()
        self.flush()
        super().close()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            self.flush()


@contextmanager
def capture_job_log(engine: Engine, job_id: int) -> Iterator[JobLogHandler]:
    """Job ``job_id``'s log records, written to its log in the state while the block
    runs (the ``costor`` loggers at INFO and up; ``costor.job`` too when it does not pass
    its records up, as the CLI sets it: costor/util/log.py)."""
    handler = JobLogHandler(engine, job_id)
    loggers = [logging.getLogger(ROOT)]
    if not logging.getLogger(JOB).propagate:
        loggers.append(logging.getLogger(JOB))
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


@dataclass(frozen=True)
class JobLog:
    """``costor jobs log ID --json``: a job's log lines after ``after``."""

    job_id: int
    state: str
    after: int
    first_seq: int | None
    lines: list[JobLogLineRow]
    more: bool  # more lines follow these already (ask again with ``next``)

    @property
    def next(self) -> int:
        """What to pass as ``after`` to get the lines that follow these."""
        return self.lines[-1].seq if self.lines else self.after

    @property
    def ended(self) -> bool:
        return self.state not in RUNNING

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job_id,
            "state": self.state,
            "ended": self.ended,
            "after": self.after,
            "next": self.next,
            "more": self.more,
            "first_seq": self.first_seq,
            "lines": [
                {"seq": row.seq, "time": _iso(row.time), "level": row.level, "text": row.text}
                for row in self.lines
            ],
        }


def job_log(ctx: Context, job_id: int, after: int | None = None) -> JobLog:
    """Job ``job_id``'s log lines numbered after ``after`` (None: from the first kept),
    oldest first, at most :data:`costor.db.joblogs.MAX_READ`. :class:`JobNotFound` when
    there is no such job."""
    if after is not None and not 0 <= after <= MAX_SEQ:
        raise UsageError(message=f"after must be from 0 to {MAX_SEQ}, not {after}")
    job = jobs.get_job(ctx.engine, job_id)
    if job is None:
        raise JobNotFound(job_id=job_id)
    start = after or 0
    rows, first = joblogs.read_lines(ctx.engine, job_id, after=start, limit=joblogs.MAX_READ + 1)
    more = len(rows) > joblogs.MAX_READ
    return JobLog(job_id, job.state, start, first, rows[: joblogs.MAX_READ], more)


def _iso(value: datetime) -> str:
    """A stored time as ISO 8601 in UTC (SQLite hands it back without its zone)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
