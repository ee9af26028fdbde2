"""A pack cut short on the storage is damage: restore and check exit 3 (as for any
other damage), not 1 as if the storage had failed to answer (issue 19, item 9)."""

from __future__ import annotations

import os

from support.fixtures import Site


def test_a_truncated_pack_is_damage(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    packs = sorted((site.pool_path / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    largest = [p for p in packs if p.is_file()][-1]
    os.truncate(largest, largest.stat().st_size // 2)

    restored = site.cli("restore", "alpha:latest", "--target", str(site.root / "out"))
    assert restored.code == 3, restored.stdout + restored.stderr
    assert "truncated" in restored.stderr
    checked = site.cli("check", "--read-data")
    assert checked.code == 3, checked.stdout + checked.stderr
