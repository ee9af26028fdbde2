"""Rollback evidence: a snapshot the state recorded that the pool no longer holds
(its manifest deleted, or the storage rolled back) is damage for ``check`` (exit 3),
until ``pool reindex`` accepts the pool as it is (issue 19, item 8). A forget is not:
tests/cli/test_forget.py checks the pool after forgetting."""

from __future__ import annotations

from support.fixtures import Site


def test_a_vanished_snapshot_is_reported_by_check(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    assert site.cli("backup", "alpha").code == 0
    newest = max(site.cli("snapshots", "--json").json(), key=lambda s: s["time"])
    assert site.cli("check").code == 0

    (site.pool_path / "snapshots" / newest["id"]).unlink()  # someone with storage access
    checked = site.cli("check")
    assert checked.code == 3, checked.stdout + checked.stderr
    assert f"DAMAGE missing_snapshot snapshots/{newest['id']}" in checked.stdout
    assert "rolled back" in checked.stdout and "costor pool reindex --pool main" in checked.stdout
    report = site.cli("check", "--json").json()
    [problem] = report["pools"][0]["problems"]
    assert problem["kind"] == "missing_snapshot"

    assert site.cli("pool", "reindex", "--pool", "main").code == 0  # accepted as it is
    assert site.cli("check").code == 0
