"""The state is its owner's alone: the state directory 0700, a SQLite state database
(which holds the plan-signing key) and its -wal and -shm files 0600; a state made
loose before this rule is tightened by the next command (issue 19, item 9)."""

from __future__ import annotations

import stat
from pathlib import Path

from support.fixtures import Site
from support.inventory import TEST_DATABASE


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_state_is_private(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    state_dir = site.inventory.parent / ".costor"
    assert _mode(state_dir) == 0o700
    if not TEST_DATABASE:  # SQLite: the database is a file in the state directory
        database = state_dir / "state.db"
        assert _mode(database) == 0o600
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{database}{suffix}")
            if extra.exists():
                assert _mode(extra) == 0o600, suffix


def test_a_loose_state_is_tightened(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    state_dir = site.inventory.parent / ".costor"
    state_dir.chmod(0o755)
    database = state_dir / "state.db"
    if not TEST_DATABASE:
        database.chmod(0o644)
    assert site.cli("snapshots").code == 0
    assert _mode(state_dir) == 0o700
    if not TEST_DATABASE:
        assert _mode(database) == 0o600
