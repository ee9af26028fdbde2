"""A backup that stored its snapshot but could not read everything exits 5 (documented:
an incomplete backup is not a complete one), names what it missed, and says so in its
JSON (``"complete": false``); ``--all`` exits 5 when no client failed but one is
incomplete (issue 19, item 13)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import write_local_inventory

IS_ROOT = os.geteuid() == 0


def _site_with_a_hole(tmp_path: Path, source: Path) -> Site:
    """A client whose paths name one that vanished since it was declared (a path that
    cannot be read, for root too)."""
    inventory = write_local_inventory(
        tmp_path, {"alpha": [source, tmp_path / "vanished"], "beta": [source]}
    )
    return Site(tmp_path, inventory, tmp_path / "pool")


def test_an_incomplete_backup_exits_5(tmp_path: Path, source: Path) -> None:
    site = _site_with_a_hole(tmp_path, source)
    assert site.cli("apply", "--auto-approve").code == 0
    human = site.cli("backup", "alpha")
    assert human.code == 5, human.stdout + human.stderr
    assert "vanished" in human.stderr
    document = site.cli("backup", "alpha", "--json")
    assert document.code == 5 and document.json()["complete"] is False
    assert site.cli("snapshots", "--json").json()  # the snapshot holds the rest
    complete = site.cli("backup", "beta", "--json")
    assert complete.code == 0 and complete.json()["complete"] is True
    assert site.cli("backup", "--all").code == 5


@pytest.mark.skipif(IS_ROOT, reason="root reads anything")
def test_an_unreadable_file_makes_it_incomplete(site: Site, source: Path) -> None:
    (source / "docs" / "readme.txt").chmod(0)
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 5
