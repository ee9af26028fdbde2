"""A tampering matrix over a pool's objects (issue 19): key slots, index segments,
snapshot manifests and packs, each truncated (to half, to nothing), flipped (one bit in
the middle), deleted, swapped (replaced by another object of its kind from the same
pool, under the first one's name) and replayed (an object of another pool with the same
passphrase). For every case ``check``, ``check --read-data``, ``restore`` and a later
``backup`` give exit 3 or a clear error (exit 1) — never a traceback — and a restore
never leaves wrong bytes: one that exits 0 restored exactly the source, one that fails
left no file with other content than the source's. The identity file's cases are in
tests/cli/test_pool_upgrade.py and tests/store/test_pool_params.py.

Exit 0 is accepted only where nothing is damaged (see ``NOT_DAMAGE``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import write_local_inventory

KINDS = ["key", "index", "manifest", "pack"]
TAMPERINGS = ["half", "empty", "flip", "delete", "swap", "replay"]

# Cases that leave a pool with nothing lost, where ``check --read-data`` may exit 0.
NOT_DAMAGE: dict[tuple[str, str], str] = {
    ("index", "delete"): "the index is rebuildable: its packs are read through their trailers",
}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def _objects(pool: Path, kind: str) -> list[Path]:
    where = {"key": "keys", "index": "index", "manifest": "snapshots", "pack": "packs"}[kind]
    found = [p for p in (pool / where).rglob("*") if p.is_file() and ".tmp-" not in p.name]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _backed_up(site: Site, source: Path) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    (source / "docs" / "second.bin").write_bytes(os.urandom(200_000))
    assert site.cli("backup", "alpha").code == 0


def _target(site: Site, kind: str) -> Path:
    """The object tampered with: the newest of its kind (the largest pack; the oldest key
    slot, the one the inventory's passphrase opens)."""
    if kind == "key":
        return _objects(site.pool_path, kind)[0]
    if kind == "pack":
        return max(_objects(site.pool_path, kind), key=lambda p: p.stat().st_size)
    return _objects(site.pool_path, kind)[-1]


def _other_pool(tmp_path: Path, source: Path) -> Site:
    root = tmp_path / "other"
    root.mkdir()
    other = Site(root, write_local_inventory(root, {"alpha": [source]}), root / "pool")
    assert other.cli("apply", "--auto-approve").code == 0
    assert other.cli("backup", "alpha").code == 0
    return other


def _tamper(site: Site, kind: str, how: str, tmp_path: Path, source: Path) -> None:
    target = _target(site, kind)
    data = target.read_bytes()
    if how == "half":
        target.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "flip":
        middle = len(data) // 2
        target.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :])
    elif how == "delete":
        target.unlink()
    elif how == "swap":
        others = [p for p in _objects(site.pool_path, kind) if p != target]
        target.write_bytes(others[-1].read_bytes())
    else:  # replay: the same kind of object from another pool with the same passphrase
        foreign = _target(_other_pool(tmp_path, source), kind)
        if kind == "key":
            target.write_bytes(foreign.read_bytes())  # in place of the pool's only slot
        else:  # under its own name: it is named by the hash of its bytes
            place = site.pool_path / foreign.relative_to(tmp_path / "other" / "pool")
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(foreign, place)


def _clean(result_code: int, out: str, err: str, what: str) -> None:
    assert "Traceback" not in out + err, f"{what}: {out}{err}"
    assert result_code in (0, 1, 3), f"{what}: exit {result_code}: {out}{err}"
    if result_code == 1:
        assert err.strip(), f"{what}: exit 1 without an error message"


@pytest.mark.parametrize("how", TAMPERINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_tampering(
    site: Site, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, how: str
) -> None:
    _backed_up(site, source)
    if kind == "key" and how == "swap":  # a second slot to swap with
        monkeypatch.setenv("NEWPW", "another passphrase")
        added = site.cli("pool", "add-key", "--pool", "main", "--new-passphrase-env", "NEWPW")
        assert added.code == 0, added.stderr
    expected = _files(source)
    _tamper(site, kind, how, tmp_path, source)

    checked = site.cli("check")
    _clean(checked.code, checked.stdout, checked.stderr, "check")
    read = site.cli("check", "--read-data")
    _clean(read.code, read.stdout, read.stderr, "check --read-data")
    if (kind, how) in NOT_DAMAGE:
        assert read.code == 0, read.stdout + read.stderr
    elif kind == "key":  # the pool does not open: a slot that cannot be read is damage
        if how in ("half", "empty"):
            assert read.code == 3 and "cannot be read" in read.stderr, read.stderr
        elif how != "flip":  # a flipped bit may spoil its JSON or base64, or only the key
            assert read.code == 1 and "no key slot" in read.stderr, read.stderr
    else:
        assert read.code == 3, f"check --read-data missed the damage: {read.stdout}"

    out = tmp_path / "out"
    restored = site.cli("restore", "alpha:latest", "--target", str(out))
    _clean(restored.code, restored.stdout, restored.stderr, "restore")
    got = _files(out / str(source).lstrip("/")) if out.exists() else {}
    if restored.code == 0:
        assert got == expected, "restore exited 0 with other contents than the source"
    else:
        assert all(expected.get(name) == content for name, content in got.items()), (
            "a failed restore left a file with wrong content"
        )

    backup = site.cli("backup", "alpha")
    _clean(backup.code, backup.stdout, backup.stderr, "backup")
    if kind == "pack" and how != "replay":  # another pool's pack, unindexed: unused
        assert restored.code == 3, restored.stderr
    if kind == "pack" and how in ("half", "empty", "delete"):  # seen without reading
        assert checked.code == 3, checked.stdout
    if kind == "index":  # rebuildable: no segment stops a restore or a backup (item 9)
        assert restored.code == 0 and backup.code == 0, restored.stderr + backup.stderr
    if kind == "manifest":  # a damaged manifest stops no backup (the parent is another)
        assert backup.code == 0, backup.stderr


def test_a_garbage_key_slot(site: Site) -> None:
    """A slot that is not JSON at all: a clear error, not a traceback (issue 19, item 11)."""
    assert site.cli("apply", "--auto-approve").code == 0
    [slot] = _objects(site.pool_path, "key")
    slot.write_bytes(os.urandom(300))
    for args in (("check",), ("backup", "alpha"), ("snapshots",)):
        result = site.cli(*args)
        _clean(result.code, result.stdout, result.stderr, " ".join(args))
        assert result.code == 3 and "cannot be read" in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["index", "manifest"])
def test_replayed_from_before_a_prune(site: Site, source: Path, tmp_path: Path, kind: str) -> None:
    """The same pool's object from before a prune, put back: the second snapshot is
    dropped (its manifest deleted, the pool accepted as it is), a prune deletes the
    packs only it used, then its manifest or its index segment comes back. Either now
    names packs that are gone: damage for ``check``, and a restore of what they held
    fails (exit 3); the first snapshot's files stay restorable."""
    _backed_up(site, source)
    snapshot = _target(site, "manifest")
    segment = _target(site, "index")
    kept = {p: p.read_bytes() for p in (snapshot, segment)}
    snapshot.unlink()
    assert site.cli("pool", "reindex", "--pool", "main").code == 0
    pruned = site.cli("prune", "--safety-window", "0s")
    assert pruned.code == 0 and "delete 0 pack(s)" not in pruned.stdout, pruned.stdout
    replayed = snapshot if kind == "manifest" else segment
    replayed.write_bytes(kept[replayed])

    read = site.cli("check", "--read-data")
    _clean(read.code, read.stdout, read.stderr, "check --read-data")
    assert read.code == 3, read.stdout
    out = tmp_path / "out"
    restored = site.cli("restore", "alpha:latest", "--target", str(out))
    _clean(restored.code, restored.stdout, restored.stderr, "restore")
    expected = _files(source)
    got = _files(out / str(source).lstrip("/")) if out.exists() else {}
    if kind == "manifest":  # the replayed snapshot is the newest: its data is gone
        assert restored.code == 3, restored.stderr
        assert all(expected.get(name) == content for name, content in got.items())
    else:  # the first snapshot's packs are all there
        del expected["docs/second.bin"]
        assert restored.code == 0 and got == expected, restored.stderr
    backup = site.cli("backup", "alpha")
    _clean(backup.code, backup.stdout, backup.stderr, "backup")
