"""Retention: which snapshots a set of ``keep`` rules keeps, and why (pure, no I/O).

The algorithm is restic's ``forget --keep-*`` (``ApplyPolicy`` in restic 0.14,
``internal/restic/snapshot_policy.go``), so an operator who knows restic predicts what
CoStor keeps:

- snapshots are sorted newest first;
- each rule (last, hourly, daily, weekly, monthly, yearly) has a count and maps a
  snapshot to a period bucket (``last``: every snapshot is its own bucket; ``weekly``:
  the ISO 8601 week, so 2027-01-01 is in week 2026-W53);
- walking from newest to oldest, a rule keeps a snapshot when its bucket differs from
  the bucket of the last snapshot that rule kept and the rule has count left; each keep
  spends one of the rule's count. So each rule keeps the newest snapshot of each of its
  N most recent periods *that hold a snapshot* (gaps are skipped, not counted);
- a snapshot is kept if any rule keeps it, and every rule that did is a reason;
- with no rule at all, everything is kept.

Two deliberate differences from restic, both written in ``docs/retention.md``:

- **Periods are computed in UTC.** restic uses each snapshot's local time (the time
  zone of the machine that took it). CoStor's manifests store UTC, and a server's time
  zone must not change which snapshots survive; a nightly backup at 00:30 local time
  east of Greenwich is counted on the previous UTC day.
- **Ties** (two snapshots with the same time) are ordered by id, newest-first order
  then descending id, so the result does not depend on listing order (restic keeps
  its listing order).

restic 0.16 added one rule that this function does *not* apply (nor does restic 0.14,
which the tests compare against): "keep the oldest snapshot too when a rule still has
count left". See ``docs/retention.md``.

The caller groups the snapshots (CoStor: one group per client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime

# The rules in the order restic evaluates them (and lists its reasons).
RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class KeepRules:
    """How many snapshots each rule keeps; None or 0: the rule is not used."""

    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            count = getattr(self, item.name)
            if count is not None and (not isinstance(count, int) or count < 0):
                raise ValueError(f"keep {item.name}: expected a count >= 0, got {count!r}")

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int | None]) -> KeepRules:
        unknown = set(counts) - set(RULES)
        if unknown:
            raise ValueError(f"unknown retention rule(s): {', '.join(sorted(unknown))}")
        return cls(**counts)

    def counts(self) -> dict[str, int]:
        """The rules in use, in evaluation order."""
        return {name: count for name in RULES if (count := getattr(self, name))}

    @property
    def empty(self) -> bool:
        return not self.counts()


@dataclass(frozen=True)
class Decision:
    """One snapshot's fate. ``reasons`` are human (``daily snapshot (2026-11-30)``),
    ``rules`` the same as rule names (``daily``), both in rule order; empty when removed."""

    id: str
    time: str
    keep: bool
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetentionResult:
    """Every snapshot of the group, newest first."""

    rules: KeepRules
    decisions: tuple[Decision, ...]

    @property
    def kept(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.keep)

    @property
    def removed(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if not d.keep)


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (``2026-11-30T02:00:00.123456Z``, with or without fractional
    seconds, any offset) as an aware UTC datetime; a time without offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _hour(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:00")


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _iso_week(moment: datetime) -> str:
    year, week, _weekday = moment.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _year(moment: datetime) -> str:
    return f"{moment.year:04d}"


# Rule -> the period a time falls in (``last`` has none: every snapshot is its own).
_PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": _hour,
    "daily": _day,
    "weekly": _iso_week,
    "monthly": _month,
    "yearly": _year,
}


def apply_retention(snapshots: Iterable[tuple[str, str]], rules: KeepRules) -> RetentionResult:
    """Decide, for (id, RFC 3339 time) pairs of one group, which are kept and why."""
    ordered = sorted(
        ((snapshot_id, time, parse_time(time)) for snapshot_id, time in snapshots),
        key=lambda item: (item[2], item[0]),
        reverse=True,
    )
    if rules.empty:
        return RetentionResult(
            rules,
            tuple(
                Decision(sid, time, True, ("no retention rule",), ()) for sid, time, _ in ordered
            ),
        )
    left = rules.counts()
    last_bucket: dict[str, str | int | None] = dict.fromkeys(left)
    decisions = []
    for position, (snapshot_id, time, moment) in enumerate(ordered):
        reasons: list[str] = []
        matched: list[str] = []
        for rule in left:
            if left[rule] == 0:
                continue
            bucket: str | int = position if rule == "last" else _PERIODS[rule](moment)
            if bucket == last_bucket[rule]:
                continue
            last_bucket[rule] = bucket
            left[rule] -= 1
            matched.append(rule)
            reasons.append("last snapshot" if rule == "last" else f"{rule} snapshot ({bucket})")
        decisions.append(Decision(snapshot_id, time, bool(matched), tuple(reasons), tuple(matched)))
    return RetentionResult(rules, tuple(decisions))
