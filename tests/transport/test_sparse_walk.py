"""Sparse walks (costor/transport/helper.py, protocol 3): a directory whose names are the
parent's sends only what changed, and the server takes the parent's entries for the
rest. Each test pulls the same tree as two clients: ``sparse`` keeps its cache (so its
pulls walk sparse), ``full`` loses it before every pull (so its pulls send every path).
Both must give the same snapshot tree, the same counters, and a byte-identical restore."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.fixtures import PASSPHRASE, Site, tree_digest
from support.sshd import Sshd, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)

from costor.store.backends.local import LocalBackend
from costor.store.index import BlobLocation
from costor.store.pool import Pool

COUNTERS = ("files_unmodified", "dirs", "bytes_processed", "files_failed")


def make_tree(root: Path) -> Path:
    src = root / "src"
    for d in range(12):
        sub = src / f"d{d:02}" / "sub"
        sub.mkdir(parents=True)
        for f in range(40):
            (src / f"d{d:02}" / f"f{f:03}").write_text(f"file {d} {f}\n" * (f + 1))
        for f in range(10):
            (sub / f"f{f:03}").write_text(f"deep {d} {f}\n" * 7)
    (src / "d00" / "a").write_text("linked\n" * 20)
    os.link(src / "d00" / "a", src / "d00" / "b")
    (src / "d01" / "link").symlink_to("f001")
    for path in [src, *src.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    return src


def two_clients(tmp_path: Path, sshd: Sshd, src: Path, user: str = "root") -> Site:  # noqa: F811
    site = ssh_site(
        tmp_path,
        sshd,
        {"sparse": {"paths": [src], "user": user}, "full": {"paths": [src], "user": user}},
    )
    assert site.cli("apply", "--auto-approve").code == 0
    return site


def backup(site: Site, client: str, *, code: int = 0) -> dict[str, Any]:
    if client == "full":
        for cache in (site.root / ".costor" / "cache").glob("*/full"):
            shutil.rmtree(cache)
    result = site.cli("backup", client, "--json")
    assert result.code == code, result.stderr
    document: dict[str, Any] = result.json()
    return document


def tree_of(site: Site, snapshot_id: str) -> str:
    snapshots = site.cli("snapshots", "--json").json()
    (tree,) = [s["tree"] for s in snapshots if s["id"] == snapshot_id]
    return str(tree)


def both(site: Site) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pull of each client; the same snapshot tree and counters."""
    sparse, full = backup(site, "sparse"), backup(site, "full")
    if tree_of(site, sparse["snapshot_id"]) != tree_of(site, full["snapshot_id"]):
        # The directories leading to the paths (the system's temporary directory, where
        # remote_dir is) are recorded with their stat data, which any other process on
        # the machine changes between the two pulls by making a file there: only they
        # may differ.
        diff = site.cli("diff", sparse["snapshot_id"], full["snapshot_id"], "--json").json()
        leading = {
            str(p) for p in [Path(tempfile.gettempdir()), *Path(tempfile.gettempdir()).parents]
        }
        assert all(
            c["change"] == "metadata" and c["type"] == "dir" and c["path"] in leading
            for c in diff["changes"]
        ), diff
    assert {k: sparse[k] for k in COUNTERS} == {k: full[k] for k in COUNTERS}
    return sparse, full


def omissible(document: dict[str, Any]) -> int:
    """What a sparse walk of make_tree's tree leaves out when nothing changed (see the
    first test)."""
    return int(document["files_unmodified"]) - 2 + int(document["dirs"]) - 3


def restored_equal(site: Site, client: str, src: Path, target: Path) -> None:
    result = site.cli("restore", f"{client}:latest", "--target", str(target))
    assert result.code == 0, result.stderr
    assert tree_digest(target / str(src).lstrip("/")) == tree_digest(src)


def test_a_sparse_walk_sends_only_changes_and_gives_the_full_walks_snapshot(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = two_clients(tmp_path, sshd, src)
    first, _ = both(site)  # no parent: both walk whole
    assert first["files_new"] == 12 * 50 + 2
    unchanged, full = both(site)
    assert unchanged["files_unmodified"] == 12 * 50 + 2 and unchanged["dirs"] == 25
    # All but src, the linked pair (sent by path, for its other name), the symlink (not
    # a file: sent whole) and the two directories holding them.
    assert unchanged["entries_omitted"] == 600 + 24 - 2 == omissible(unchanged)
    assert full["entries_omitted"] == 0

    (src / "d02" / "f003").write_text("changed\n")
    (src / "d03" / "f004").unlink()
    (src / "d04" / "new.txt").write_text("new\n")
    (src / "d05" / "newdir").mkdir()
    (src / "d05" / "newdir" / "x").write_text("x\n")
    shutil.rmtree(src / "d06" / "sub")
    (src / "d07").chmod(0o700)
    (src / "d00" / "a").write_text("the linked file changed\n")
    os.utime(src / "d08" / "sub" / "f001", ns=(1, 1_000_000_000))
    (src / "d09" / "f000").rename(src / "d09" / "renamed")
    os.link(src / "d10" / "f000", src / "d11" / "extra")  # a second name, elsewhere
    changed, full = both(site)
    assert (
        changed["files_new"] + changed["files_changed"] == full["files_new"] + full["files_changed"]
    )
    assert 0 < changed["entries_omitted"] < unchanged["entries_omitted"]
    restored_equal(site, "sparse", src, tmp_path / "r1")

    # After changes the cache holds the new directories' hashes: the next pull is
    # sparse everywhere again, and still the same snapshot.
    again, full = both(site)
    assert again["files_unmodified"] == unchanged["files_unmodified"] - 1 + 2 - 10 + 1
    assert again["entries_omitted"] == omissible(again) - 4  # the new pair, as in d00
    restored_equal(site, "sparse", src, tmp_path / "r2")
    assert site.cli("check", "--read-data").code == 0


def test_what_fails_in_a_sparse_directory_is_left_out_as_in_a_full_walk(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = two_clients(tmp_path, sshd, src, user="costortest")
    both(site)
    both(site)
    (src / "d02" / "f007").chmod(0o000)  # cannot be read by costortest
    (src / "d03" / "sub").chmod(0o000)  # cannot be listed
    # Stored, but incomplete: exit 5 (files that could not be read are named).
    sparse, full = backup(site, "sparse", code=5), backup(site, "full", code=5)
    assert tree_of(site, sparse["snapshot_id"]) == tree_of(site, full["snapshot_id"])
    assert sparse["files_failed"] == full["files_failed"] >= 2
    listed = site.cli("ls", "sparse:latest", str(src / "d02")).stdout.splitlines()
    assert str(src / "d02" / "f006") in listed and str(src / "d02" / "f007") not in listed
    assert str(src / "d03" / "sub") in site.cli("ls", "sparse:latest", str(src / "d03")).stdout
    (src / "d02" / "f007").chmod(0o644)
    (src / "d03" / "sub").chmod(0o755)
    both(site)
    restored_equal(site, "sparse", src, tmp_path / "r")


def test_a_rebuilt_index_makes_the_next_pull_walk_whole(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    (src / "d05" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    site = two_clients(tmp_path, sshd, src)
    both(site)
    sparse, full = both(site)
    assert sparse["entries_omitted"] > 600
    # A pack is lost and the index rebuilt without it: a sparse walk would carry the
    # lost file's entry unread; a whole walk finds its content gone and fetches it.
    pack, _ = where(site, sparse["snapshot_id"], src / "d05" / "big.bin", lambda n: n.content[-1])
    pack.unlink()
    reindexed = site.cli("pool", "reindex", "--pool", "main")
    assert reindexed.code == 0, reindexed.stderr
    after = backup(site, "sparse")
    assert after["entries_omitted"] == 0 and after["files_changed"] >= 1
    assert after["bytes_transferred"] > 1024 * 1024  # the lost content, sent again
    restored_equal(site, "sparse", src, tmp_path / "r")
    again, _ = both(site)  # sparse again from here
    assert again["entries_omitted"] > 600


def test_an_unreadable_parent_tree_fails_the_pull_and_the_next_one_walks_whole(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = two_clients(tmp_path, sshd, src)
    both(site)
    sparse, _ = both(site)
    pack, location = where(site, sparse["snapshot_id"], src / "d03", lambda n: n.subtree)
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    (src / "d03" / "f001").write_text("changed\n")  # d03 is sparse: its parent tree is needed
    failed = site.cli("backup", "sparse", "--json")
    assert failed.code == 1
    assert "parent's tree cannot be read" in failed.stderr
    after = backup(site, "sparse")  # the cache is gone: a whole walk
    assert after["entries_omitted"] == 0
    assert after["files_new"] + after["files_changed"] == 50  # d03's: not in the parent
    restored_equal(site, "sparse", src, tmp_path / "r")


def where(
    site: Site, snapshot_id: str, path: Path, blob: Callable[[Any], bytes]
) -> tuple[Path, BlobLocation]:
    """The pack file, and the place in it, of a blob of the node at ``path``."""
    pool = Pool.open(LocalBackend(site.pool_path), PASSPHRASE)
    pool.load_index()
    node = pool.find_node(bytes.fromhex(tree_of(site, snapshot_id)), str(path))
    assert node is not None
    location = pool.index.lookup(blob(node))
    assert location is not None
    pack_id = location.pack_id
    return site.pool_path / "packs" / pack_id[:2] / pack_id[2:4] / pack_id, location
