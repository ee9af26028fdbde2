"""One damaged snapshot manifest hides no other snapshot (issue 19): `snapshots` lists
the rest with a warning, `CLIENT:latest` resolves past a damaged older one, and is
refused (exit 3) when the damaged one is the newest the state records."""

from __future__ import annotations

import time
from pathlib import Path

from support.fixtures import Site, tree_digest


def _two_snapshots(site: Site, source: Path) -> tuple[str, str]:
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "alpha", "--json").json()["snapshot_id"]
    time.sleep(1.1)  # snapshot times are to the second
    (source / "new.txt").write_text("added later\n")
    second = site.cli("backup", "alpha", "--json").json()["snapshot_id"]
    return first, second


def test_a_damaged_older_manifest_hides_nothing_else(site: Site, source: Path) -> None:
    first, second = _two_snapshots(site, source)
    (site.pool_path / "snapshots" / first).write_bytes(b"garbage")

    listed = site.cli("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    assert [s["id"] for s in listed.json()] == [second]
    assert f"snapshot {first[:12]} cannot be read and is left out" in listed.stderr
    human = site.cli("snapshots")
    assert human.code == 0 and "1 snapshot(s)" in human.stdout

    target = site.root / "out"
    restored = site.cli("restore", "alpha:latest", "--target", str(target))
    assert restored.code == 0, restored.stderr
    assert tree_digest(target / source.relative_to("/")) == tree_digest(source)
    assert site.cli("ls", "alpha:latest").code == 0
    assert site.cli("backup", "alpha").code == 0
    checked = site.cli("check", "--json")
    assert checked.code == 3
    assert [p["kind"] for p in checked.json()["pools"][0]["problems"]] == ["damaged_snapshot"]


def test_a_damaged_newest_manifest_is_not_skipped_quietly(site: Site, source: Path) -> None:
    first, second = _two_snapshots(site, source)
    (site.pool_path / "snapshots" / second).write_bytes(b"garbage")

    refused = site.cli("restore", "alpha:latest", "--target", str(site.root / "out"))
    assert refused.code == 3, refused.stdout + refused.stderr
    assert f"the newer snapshot {second[:12]}" in refused.stderr
    assert f"restore {first[:12]} by its id" in refused.stderr
    assert "Traceback" not in refused.stderr
    by_id = site.cli("restore", first, "--target", str(site.root / "older"))
    assert by_id.code == 0, by_id.stderr
    listed = site.cli("snapshots", "--json")
    assert listed.code == 0 and [s["id"] for s in listed.json()] == [first]
