"""Cron expressions (times are UTC, like cron on a UTC server): the next run after a
time, and the time between two runs."""

from __future__ import annotations

from datetime import datetime, timedelta

from costor.util.clock import utcnow


def next_time(cron: str, after: datetime) -> datetime:
    # croniter is imported here, not at the top: ~25 ms that only commands computing a
    # schedule pay (the CLI's light verbs import this module's callers' modules).
    from croniter import croniter

    return croniter(cron, after).get_next(datetime)


def interval(cron: str, after: datetime | None = None) -> timedelta:
    """The time between two consecutive runs of ``cron`` (the next two after ``after``)."""
    start = next_time(cron, after or utcnow())
    return next_time(cron, start) - start
