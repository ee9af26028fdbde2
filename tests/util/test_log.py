"""costor.util.log: the CLI's logging set-up writes each message as the line that was
printed before there was logging (the daemon's plain, a job's with the time of day)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import redirect_stderr

import pytest

from costor.util.log import JOB, ROOT, configure, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(ROOT), logging.getLogger(JOB)]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def test_names_are_under_costor() -> None:
    assert get_logger("serve").name == "costor.serve"
    assert get_logger("costor.serve") is get_logger("serve")
    assert get_logger(JOB).name == "costor.job"


def test_plain_lines_and_timed_job_lines() -> None:
    stream = io.StringIO()
    configure(stream)
    get_logger("serve").info("costor serve x: 2 worker(s)")
    get_logger("serve").warning("job 3: queued by its schedule")
    get_logger(JOB).info('{\n  "a": 1\n}')
    get_logger("serve").debug("not shown at INFO")
    lines = stream.getvalue().splitlines()
    assert lines[:2] == ["costor serve x: 2 worker(s)", "job 3: queued by its schedule"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d \{", lines[2]), lines
    assert lines[3:] == ['  "a": 1', "}"]


def test_follows_stderr_and_configuring_again_replaces() -> None:
    configure()
    configure()  # the CLI run twice in one process: still one line per message
    first, second = io.StringIO(), io.StringIO()
    with redirect_stderr(first):
        get_logger("serve").info("one")
    with redirect_stderr(second):
        get_logger("serve").info("two")
    assert (first.getvalue(), second.getvalue()) == ("one\n", "two\n")
