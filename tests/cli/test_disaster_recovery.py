"""docs/disaster-recovery.md, step by step, with the real CLI.

The site server is lost with its state database and inventory; a copy of the pool
survives (made with ``costor pool copy``). A new server with a new inventory that
declares only that pool restores the lost clients' snapshots by their names.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.fixtures import Site, tree_digest
from support.inventory import client_table, local_pool, site_table, write_tables


def lost_site(root: Path, source: Path, other: Path) -> Site:
    """The server that will be lost: one pool, two clients, backed up."""
    root.mkdir()
    inventory = write_tables(
        root,
        site_table(),
        local_pool(pack_size_mib=None),
        client_table("files", [source]),
        client_table("mail", [other]),
    )
    site = Site(root, inventory, root / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    for client in ("files", "mail", "files"):
        result = site.cli("backup", client)
        assert result.code == 0, result.stderr
    return site


def test_restore_on_a_new_server_from_a_copied_pool(tmp_path: Path, source: Path) -> None:
    other = tmp_path / "mail-data"
    other.mkdir()
    (other / "inbox").write_bytes(b"From: someone\n\nhello\n")
    old = lost_site(tmp_path / "old-server", source, other)
    expected = tree_digest(source)

    # Before the disaster: a copy of the pool elsewhere (another disk, another site).
    copy = tmp_path / "offsite" / "pool"
    copied = old.cli("pool", "copy", "main", str(copy))
    assert copied.code == 0, copied.stderr

    # The disaster: the server, its state and its inventory are gone.
    shutil.rmtree(old.root)

    # Step 1-2: a new server, an inventory declaring just the surviving pool, with the
    # pool's passphrase (here in COSTOR_TEST_PASSPHRASE, set by support/fixtures.py).
    new_root = tmp_path / "new-server"
    new_root.mkdir()
    inventory = write_tables(
        new_root,
        site_table("dr"),
        local_pool("offsite", site="dr", path=str(copy), pack_size_mib=None),
    )
    new = Site(new_root, inventory, copy)
    # Step 3: validate, plan and apply: the existing pool is adopted, not created.
    assert new.cli("validate").code == 0
    plan = new.cli("plan")
    assert plan.code == 0, plan.stderr
    applied = new.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    # Step 4: rebuild the new state's catalogue (and the index) from the pool.
    reindexed = new.cli("pool", "reindex", "--pool", "offsite", "--json")
    assert reindexed.code == 0, reindexed.stderr
    assert reindexed.json()["snapshots"] == 3
    # Step 5: the lost clients' snapshots, though no client is declared.
    listed = new.cli("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    assert sorted(s["client"] for s in listed.json()) == ["files", "files", "mail"]
    only_files = new.cli("snapshots", "--client", "files", "--json")
    assert only_files.code == 0, only_files.stderr
    assert len(only_files.json()) == 2
    # Step 6: a full restore of each client's latest snapshot.
    target = new_root / "restore" / "files"
    restored = new.cli("restore", "files:latest", "--target", str(target), "--json")
    assert restored.code == 0, restored.stderr
    assert restored.json()["snapshot_id"] == only_files.json()[-1]["id"]
    assert tree_digest(target / str(source).lstrip("/")) == expected
    mail_target = new_root / "restore" / "mail"
    assert new.cli("restore", "mail:latest", "--target", str(mail_target)).code == 0
    assert tree_digest(mail_target / str(other).lstrip("/")) == tree_digest(other)
    # Step 7: check the pool.
    checked = new.cli("check", "--read-data")
    assert checked.code == 0, checked.stderr
