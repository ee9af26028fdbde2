"""A client renamed with ``[[moved]]`` keeps the host key recorded for it (no second
trust-on-first-use under the new name, and a changed key is still refused), against a
real OpenSSH sshd on loopback (tests/support/sshd.py)."""

from __future__ import annotations

from pathlib import Path

from support.fixtures import Site
from support.sshd import Sshd, make_tree, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)


def rename(site: Site, old: str, new: str) -> None:
    text = site.inventory.read_text().replace(f"[clients.{old}]", f"[clients.{new}]")
    site.inventory.write_text(text + f'\n[[moved]]\nfrom = "client.{old}"\nto = "client.{new}"\n')


def test_a_moved_client_keeps_its_host_key(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src]}})
    assert site.cli("apply", "--auto-approve").code == 0
    recorded = site.cli("hostkey", "show", "web", "--json").json()["recorded"]
    assert recorded
    first = site.cli("backup", "web", "--json").json()

    rename(site, "web", "www")
    plan = site.cli("plan", "--json", "--detailed-exitcode")
    assert plan.code == 2, plan.stdout + plan.stderr
    [change] = [c for c in plan.json()["resource_changes"] if c["address"] == "client.www"]
    assert change["previous_address"] == "client.web"
    assert change["change"]["actions"] == ["no-op"], change
    assert "host key" not in change["reason"] and "host_key" not in change.get("details", {})
    assert "records the host key" not in site.cli("plan").stdout
    assert site.cli("apply", "--auto-approve").code == 0
    shown = site.cli("hostkey", "show", "www", "--json").json()
    assert shown["recorded"] == recorded == shown["presented"]
    second = site.cli("backup", "www", "--json")
    assert second.code == 0, second.stderr
    assert second.json()["parent"] == first["snapshot_id"]
    assert site.cli("plan", "--detailed-exitcode").code == 0

    # Renamed again while the host presents another key: still refused, not trusted anew.
    rename(site, "www", "www2")
    sshd.new_host_key()
    try:
        plan = site.cli("plan", "--detailed-exitcode")
        assert plan.code == 4, plan.stdout + plan.stderr
        assert "Blocked: client.www2: the host key of 127.0.0.1 changed" in plan.stdout
        assert "records the host key" not in plan.stdout
        refused = site.cli("apply", "--auto-approve")
        assert refused.code == 1 and "host key of 127.0.0.1 changed" in refused.stderr
        assert site.cli("hostkey", "show", "www", "--json").json()["recorded"] == recorded
    finally:
        sshd.stop()
        sshd.start()
