"""Logging: one ``costor`` logger, and the loggers under it.

Code below the CLI does not print: the daemon (``costor.serve``) and a job's run
(``costor.job``) log, and the CLI entry point calls :func:`configure` once, which sends
every message to stderr as its text alone, exactly as the lines were printed before
there was logging (tests/cli/test_daemon.py reads them). A job's lines carry the time
of day in front (``12:03:04 job 7: …``): they go to the job's log file, read later,
while the daemon's own stderr is usually collected by something that adds its own time
(journald, docker logs).

Without :func:`configure` (CoStor used as a library) nothing is set up here: the
application's own logging configuration decides, as the ``logging`` docs advise for
libraries.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

ROOT = "costor"
JOB = f"{ROOT}.job"  # a job's log: its lines are timestamped


def get_logger(name: str) -> logging.Logger:
    """The logger ``costor.NAME`` (``name`` may already start with ``costor.``)."""
    if name != ROOT and not name.startswith(f"{ROOT}."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


class _Handler(logging.StreamHandler[IO[str]]):
    """A StreamHandler to ``stream``, or (None) to whatever ``sys.stderr`` is when a
    message is written: tests redirect it, and a job forked by the daemon writes its
    stderr, which is then its log file."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self.follow_stderr:
            self.stream = sys.stderr
        super().emit(record)  # writes the line, then flushes, as print(flush=True) did


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> None:
    """Messages of ``costor`` and below at ``level`` or above go to ``stream`` (default:
    stderr at the time of writing), one line each: the message alone, or for
    ``costor.job`` the time of day (local, ``HH:MM:SS``) and the message. Calling it
    again replaces what an earlier call set up (the CLI may run several times in one
    process, as the tests do)."""
    plain = _Handler(stream)
    plain.setFormatter(logging.Formatter("%(message)s"))
    timed = _Handler(stream)
    timed.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    for name, handler in ((ROOT, plain), (JOB, timed)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        # Not passed up to Python's root logger (which an embedding application may
        # have pointed elsewhere); costor.job not through costor's handler (it has its
        # own format).
        logger.propagate = False
