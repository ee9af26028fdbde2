"""Retention decisions: the cases in retention_cases/*.json, and the same algorithm
compared with the real restic binary on ~40 snapshots.

A case file is ``{"description", "retention": {rule: count}, "snapshots": [times],
"keep": [times kept], "reasons": {time: [reasons]}?}``; a bug becomes a new file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from costor.store.retention import KeepRules, apply_retention, parse_time

CASES = sorted((Path(__file__).parent / "retention_cases").glob("*.json"))
RESTIC = "/usr/bin/restic"


def _ids(times: list[str]) -> list[tuple[str, str]]:
    # Ids in input order; no case repeats a time, so the tie-break by id never decides.
    return [(f"snap{index:03d}", time) for index, time in enumerate(times)]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    result = apply_retention(_ids(case["snapshots"]), KeepRules.from_mapping(case["retention"]))
    assert [d.time for d in result.kept] == case["keep"], case["description"]
    assert len(result.decisions) == len(case["snapshots"])
    assert set(d.time for d in result.removed) == set(case["snapshots"]) - set(case["keep"])
    for decision in result.decisions:
        assert bool(decision.reasons) == decision.keep
    by_time = {d.time: d for d in result.decisions}
    for time, reasons in case.get("reasons", {}).items():
        assert list(by_time[time].reasons) == reasons, (path.stem, time)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 12


def test_newest_first_and_ties_by_id() -> None:
    same = "2026-11-30T02:00:00Z"
    result = apply_retention([("aaa", same), ("ccc", same), ("bbb", same)], KeepRules(last=1))
    assert [d.id for d in result.decisions] == ["ccc", "bbb", "aaa"]
    assert [d.id for d in result.kept] == ["ccc"]


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="daily"):
        KeepRules(daily=-1)
    with pytest.raises(ValueError, match="fortnightly"):
        KeepRules.from_mapping({"fortnightly": 2})
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")
    assert parse_time("2026-11-30T02:00:00").tzinfo is UTC


# --- restic itself ------------------------------------------------------------------

# ~40 times meant to catch differences: several snapshots a day and an hour, gaps of
# days, weeks and months, New Year (2026 has 53 ISO weeks: 2027-01-01..03 are in
# 2026-W53), a second before and at midnight, month ends.
RESTIC_TIMES = sorted(
    {
        *(
            (datetime(2026, 12, 20, 2, tzinfo=UTC) + timedelta(days=day)).isoformat()
            for day in range(25)
            if day % 4 != 3  # gaps
        ),
        "2026-12-24T02:10:00+00:00",
        "2026-12-24T03:00:00+00:00",
        "2026-12-31T23:59:59+00:00",
        "2027-01-01T00:00:00+00:00",
        "2027-01-01T00:30:00+00:00",
        "2027-01-01T13:05:00+00:00",
        "2027-01-04T00:00:01+00:00",
        "2027-01-08T02:00:00+00:00",
        "2027-01-08T02:45:00+00:00",
        "2027-01-08T03:10:00+00:00",
        "2026-11-30T23:59:59+00:00",
        "2026-12-01T00:00:00+00:00",
        "2026-11-15T02:00:00+00:00",
        "2026-10-31T02:00:00+00:00",
        "2026-08-01T02:00:00+00:00",
        "2026-01-01T00:00:00+00:00",
        "2025-12-31T12:00:00+00:00",
        "2025-12-29T12:00:00+00:00",  # 2026-W01
        "2025-06-15T02:00:00+00:00",
        "2024-02-29T02:00:00+00:00",
        "2021-01-03T02:00:00+00:00",  # 2020-W53
    }
)

RESTIC_RETENTIONS: list[dict[str, int]] = [
    {"daily": 7, "weekly": 4},
    {"last": 3, "hourly": 5},
    {"monthly": 6, "yearly": 3},
    {"last": 2, "daily": 3, "weekly": 3, "monthly": 3, "yearly": 10},
    {"weekly": 10},
    {"hourly": 30, "daily": 10, "yearly": 2},
    {"daily": 100},
]

_FLAGS = {
    "last": "--keep-last",
    "hourly": "--keep-hourly",
    "daily": "--keep-daily",
    "weekly": "--keep-weekly",
    "monthly": "--keep-monthly",
    "yearly": "--keep-yearly",
}


def _restic(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [RESTIC, "--no-cache", "--quiet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _utc_second(text: str) -> str:
    return parse_time(text).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.skipif(not os.path.exists(RESTIC), reason="needs restic (/usr/bin/restic)")
def test_same_decisions_as_restic(tmp_path: Path) -> None:
    assert shutil.which(RESTIC)
    assert len(RESTIC_TIMES) >= 38
    source = tmp_path / "data"
    source.mkdir()
    (source / "file").write_text("tiny\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TZ": "UTC",  # restic buckets in local time; CoStor in UTC
        "RESTIC_REPOSITORY": str(tmp_path / "repo"),
        "RESTIC_PASSWORD": "retention test",
    }
    _restic(env, "init")

    def backup(time: str) -> None:
        stamp = parse_time(time).strftime("%Y-%m-%d %H:%M:%S")
        _restic(env, "backup", "--time", stamp, "--host", "h", str(source))

    # Each restic call spends ~0.5 s deriving its key; backups to one repository may
    # run side by side (they take shared locks), and so may dry runs without a lock
    # (restic 0.14's forget takes an exclusive one even for --dry-run).
    with ThreadPoolExecutor(max_workers=4) as executor:
        list(executor.map(backup, RESTIC_TIMES))

        def restic_kept(retention: dict[str, int]) -> list[str]:
            flags = [f"{_FLAGS[rule]}={count}" for rule, count in retention.items()]
            groups: list[dict[str, Any]] = json.loads(
                _restic(env, "--no-lock", "forget", "--dry-run", "--json", *flags)
            )
            [group] = groups
            assert len(group["keep"]) + len(group["remove"] or []) == len(RESTIC_TIMES)
            return sorted((_utc_second(s["time"]) for s in group["keep"]), reverse=True)

        expected = list(executor.map(restic_kept, RESTIC_RETENTIONS))

    snapshots = _ids(RESTIC_TIMES)
    for retention, restic_says in zip(RESTIC_RETENTIONS, expected, strict=True):
        ours = apply_retention(snapshots, KeepRules.from_mapping(retention))
        assert [_utc_second(d.time) for d in ours.kept] == restic_says, retention
