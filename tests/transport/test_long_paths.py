"""A path longer than PATH_MAX (4,096 bytes on Linux) cannot be reached by name: through
the helper it is reported as not read, named, exactly as the local walk reports it
(the backup is incomplete: exit 5, ``"complete": false``), and what lies beside it is
backed up. A real tree on disk, pulled through a real sshd (tests/support/sshd.py)."""

from __future__ import annotations

import os
from pathlib import Path

from support.fixtures import Site
from support.inventory import BASE_TABLES, client_table, ssh_client, write_tables
from support.sshd import Sshd, remote_dir, sshd  # noqa: F401  (fixtures)

PATH_MAX = 4096  # bytes of a path the kernel takes, its final NUL included
NAME = "d" * 200


def deep_tree(root: Path) -> tuple[Path, Path, Path]:
    """Under ``root``: directories named ``NAME`` nested until the path passes PATH_MAX,
    a file at the bottom. Made relative to each directory's descriptor, as the full
    path cannot be used. Returns the first directory whose path is too long, a file
    beside it (as long), and the deepest directory that still fits."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    path, fits = str(root), root
    try:
        while len(path.encode()) < PATH_MAX + 300:
            os.mkdir(NAME, 0o755, dir_fd=directory)
            child = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory, path = child, f"{path}/{NAME}"
            if len(path.encode()) < PATH_MAX:
                fits = Path(path)
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=directory)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
    finally:
        os.close(directory)
    too_long, file = Path(f"{fits}/{NAME}"), Path(f"{fits}/{'f' * 200}")
    assert len(str(too_long).encode()) >= PATH_MAX > len(str(fits).encode())
    beside = os.open(fits, os.O_RDONLY | os.O_DIRECTORY)  # still reachable by name
    try:
        os.close(os.open(file.name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=beside))
    finally:
        os.close(beside)
    return too_long, file, fits


def test_a_path_past_path_max_is_named_as_not_read_as_the_local_walk_does(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = remote_dir / "src"
    src.mkdir()
    src.chmod(0o755)
    (src / "beside.txt").write_text("read\n")
    too_long, file, fits = deep_tree(src)
    tables = [
        *BASE_TABLES,
        ssh_client("pulled", sshd, [src]),
        client_table("walked", [src]),  # the local walk, same tree
    ]
    site = Site(tmp_path, write_tables(tmp_path, *tables), tmp_path / "pool")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr

    documents = {}
    for client in ("pulled", "walked"):
        for attempt in ("first", "incremental"):  # the second walks sparse over SSH
            backup = site.cli("backup", client, "--json")
            assert backup.code == 5, (client, attempt, backup.stderr)
            document = backup.json()
            assert document["complete"] is False and document["files_failed"] == 2
            assert document["errors"] == [
                {"path": str(path), "error": "cannot stat: File name too long"}
                for path in (too_long, file)
            ], (client, attempt)
            documents[client, attempt] = document
            human = site.cli("backup", client)
            assert human.code == 5
            for path in (too_long, file):
                assert f"{path}: cannot stat: File name too long" in human.stderr
    assert documents["pulled", "first"]["transfer"] == "helper"
    # The same snapshot either way: what fits, down to the deepest directory reachable
    # by name, and nothing below it.
    pulled, walked = (_paths(site, f"{client}:latest", src) for client in ("pulled", "walked"))
    assert pulled == walked
    assert str(fits) in pulled and str(src / "beside.txt") in pulled
    assert not any(path.startswith((str(too_long), str(file))) for path in pulled)


def _paths(site: Site, snapshot: str, under: Path) -> list[str]:
    listed = site.cli("ls", snapshot, str(under), "--json")
    assert listed.code == 0, listed.stderr
    return sorted(str(entry["path"]) for entry in listed.json())
