"""costor restore's options, as restic >= 0.17 users expect them (issue 17):
--overwrite, --dry-run, --include/--exclude, the written/skipped/overwritten summary,
a clear error for a target that is a file, and archives that replace nothing unless
--force, in a format named with --format."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from support.fixtures import Site, tree_digest


@pytest.fixture
def backed_up(applied: Site) -> Site:
    result = applied.cli("backup", "alpha")
    assert result.code == 0, result.stderr
    return applied


def restored_root(target: Path, source: Path) -> Path:
    return target / str(source).lstrip("/")


def restore_json(site: Site, *args: str) -> dict:  # type: ignore[type-arg]
    result = site.cli("restore", "alpha:latest", *args, "--json")
    assert result.code == 0, result.stderr
    return result.json()  # type: ignore[no-any-return]


def test_target_that_is_a_file_is_a_clear_error(backed_up: Site, tmp_path: Path) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("not a directory")
    result = backed_up.cli("restore", "alpha:latest", "--target", str(existing))
    assert result.code == 1
    assert "exists and is not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert existing.read_text() == "not a directory"
    # The same as a separate process: exit 1, one line, no traceback.
    process = backed_up.run_process("restore", "alpha:latest", "--target", str(existing))
    assert process.code == 1 and "Traceback" not in process.stderr
    assert "not a directory" in process.stderr


def prepare_existing(site: Site, source: Path, target: Path) -> Path:
    """A first full restore, then the target changed: readme edited (other size),
    data.bin's copy made older and the empty file made newer than in the snapshot."""
    first = restore_json(site, "--target", str(target))
    assert first["files_new"] == 3 and first["files_overwritten"] == 0
    root = restored_root(target, source)
    (root / "docs" / "readme.txt").write_text("edited by the user")
    os.utime(root / "docs" / "readme.txt", ns=(1, 1))  # older than the snapshot's
    os.utime(root / "empty", ns=(4_000_000_000_000_000_000, 4_000_000_000_000_000_000))
    return root


def test_overwrite_always_is_the_default_and_counts(
    backed_up: Site, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "restore"
    root = prepare_existing(backed_up, source, target)
    (root / "docs" / "deep" / "er" / "data.bin").unlink()
    document = restore_json(backed_up, "--target", str(target))
    assert document["overwrite"] == "always"
    assert document["files_new"] == 1  # data.bin, removed since
    assert document["files_overwritten"] == 1  # readme.txt, edited
    assert document["files_unchanged"] == 1  # empty: same content, only mtime differed
    assert (document["files_written"], document["files_skipped"]) == (2, 1)
    assert document["files"] == 3
    assert tree_digest(root) == tree_digest(source)  # metadata set again on "empty" too
    human = backed_up.cli("restore", "alpha:latest", "--target", str(target))
    assert human.code == 0, human.stderr
    assert "0 file(s) (0 new, 0 overwritten)" in human.stdout
    assert "skipped 3 (3 unchanged" in human.stdout


def test_overwrite_never_and_if_newer_keep_existing_files(
    backed_up: Site, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "restore"
    root = prepare_existing(backed_up, source, target)
    never = restore_json(backed_up, "--target", str(target), "--overwrite", "never")
    assert (never["files_new"], never["files_overwritten"]) == (0, 0)
    assert never["files_not_overwritten"] == 3 and never["files_skipped"] == 3
    assert (root / "docs" / "readme.txt").read_text() == "edited by the user"

    newer = restore_json(backed_up, "--target", str(target), "--overwrite", "if-newer")
    # readme.txt is older than the snapshot's: replaced; "empty" is newer: kept;
    # data.bin has the snapshot's mtime exactly: not newer, kept.
    assert newer["files_overwritten"] == 1 and newer["files_not_overwritten"] == 2
    assert (root / "docs" / "readme.txt").read_bytes() == (
        source / "docs" / "readme.txt"
    ).read_bytes()
    assert (root / "empty").stat().st_mtime_ns == 4_000_000_000_000_000_000


def test_overwrite_if_changed_trusts_size_and_mtime(
    backed_up: Site, source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "restore"
    restore_json(backed_up, "--target", str(target))
    readme = restored_root(target, source) / "docs" / "readme.txt"
    st = readme.stat()
    readme.write_bytes(b"X" * st.st_size)  # same size, other content ...
    os.utime(readme, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime
    quick = restore_json(backed_up, "--target", str(target), "--overwrite", "if-changed")
    assert quick["files_unchanged"] == 3 and quick["files_overwritten"] == 0
    assert readme.read_bytes() == b"X" * st.st_size
    # always compares content: the file is replaced.
    full = restore_json(backed_up, "--target", str(target), "--overwrite", "always")
    assert full["files_overwritten"] == 1 and full["files_unchanged"] == 2
    assert readme.read_bytes() == (source / "docs" / "readme.txt").read_bytes()


def test_dry_run_lists_and_writes_nothing(backed_up: Site, source: Path, tmp_path: Path) -> None:
    target = tmp_path / "restore"
    document = restore_json(backed_up, "--target", str(target), "--dry-run")
    assert not target.exists()
    assert document["dry_run"] is True and document["files_new"] == 3
    assert document["bytes_written"] == sum(
        p.stat().st_size for p in source.rglob("*") if p.is_file()
    )
    actions = {e["path"]: e["action"] for e in document["entries"]}
    assert actions == {
        str(source / "docs" / "readme.txt"): "new",
        str(source / "docs" / "deep" / "er" / "data.bin"): "new",
        str(source / "empty"): "new",
    }
    root = prepare_existing(backed_up, source, target)
    before = tree_digest(root)
    quiet = backed_up.cli("restore", "alpha:latest", "--target", str(target), "--dry-run")
    assert quiet.code == 0, quiet.stderr
    assert str(source / "empty") not in quiet.stdout  # the list is for -v
    assert "dry run: would restore 1 file(s) (0 new, 1 overwritten)" in quiet.stdout
    human = backed_up.cli("restore", "alpha:latest", "--target", str(target), "--dry-run", "-v")
    assert human.code == 0, human.stderr
    assert f"overwrite        {source / 'docs' / 'readme.txt'}" in human.stdout
    assert f"unchanged        {source / 'empty'}" in human.stdout
    assert "dry run: would restore 1 file(s) (0 new, 1 overwritten)" in human.stdout
    assert "nothing was written" in human.stdout
    assert tree_digest(root) == before
    verbose = backed_up.cli("restore", "alpha:latest", "--target", str(tmp_path / "v"), "-v")
    assert verbose.code == 0 and f"new              {source / 'empty'}" in verbose.stdout


def test_include_and_exclude(backed_up: Site, source: Path, tmp_path: Path) -> None:
    only_docs = tmp_path / "only-docs"
    document = restore_json(backed_up, "--target", str(only_docs), "--include", "*.txt")
    root = restored_root(only_docs, source)
    assert document["files_new"] == 1
    assert (root / "docs" / "readme.txt").is_file()  # with the directories leading there
    assert not (root / "empty").exists() and not (root / "emptydir").exists()
    assert not (root / "docs" / "deep").exists()

    # A directory excluded excludes what is in it; an absolute pattern is anchored.
    no_deep = tmp_path / "no-deep"
    document = restore_json(
        backed_up, "--target", str(no_deep), "--exclude", str(source / "docs" / "deep")
    )
    root = restored_root(no_deep, source)
    assert document["files_new"] == 2
    assert (root / "docs" / "readme.txt").is_file() and (root / "empty").is_file()
    assert not (root / "docs" / "deep").exists()

    # Include a directory (its content comes along) but exclude by name inside it.
    mixed = tmp_path / "mixed"
    document = restore_json(
        backed_up,
        "--target",
        str(mixed),
        "--include",
        str(source / "docs"),
        "--exclude",
        "er",
    )
    root = restored_root(mixed, source)
    assert document["files_new"] == 1
    assert (root / "docs" / "readme.txt").is_file() and (root / "docs" / "deep").is_dir()
    assert not (root / "docs" / "deep" / "er").exists() and not (root / "empty").exists()
    # ** spans directories.
    deep = tmp_path / "deep"
    document = restore_json(backed_up, "--target", str(deep), "--include", "/**/er/*.bin")
    assert document["files_new"] == 1
    assert (restored_root(deep, source) / "docs" / "deep" / "er" / "data.bin").is_file()


def test_archive_needs_force_to_replace_and_takes_a_format(
    backed_up: Site, source: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "out.tar"
    archive.write_bytes(b"precious")
    refused = backed_up.cli("restore", "alpha:latest", "--archive", str(archive))
    assert refused.code == 1 and "--force" in refused.stderr
    assert archive.read_bytes() == b"precious"
    forced = backed_up.cli("restore", "alpha:latest", "--archive", str(archive), "--force")
    assert forced.code == 0, forced.stderr
    with tarfile.open(archive) as tar:
        assert any(name.endswith("docs/readme.txt") for name in tar.getnames())

    # A name without a known suffix: the format is named.
    unnamed = tmp_path / "backup-of-alpha"
    guessed = backed_up.cli("restore", "alpha:latest", "--archive", str(unnamed))
    assert guessed.code == 1 and "--format" in guessed.stderr
    named = restore_json(
        backed_up, "--archive", str(unnamed), "--format", "zip", "--exclude", "*.bin"
    )
    assert named["format"] == "zip" and named["files_written"] == 2
    with zipfile.ZipFile(unnamed) as zipped:
        names = zipped.namelist()
    assert any(name.endswith("docs/readme.txt") for name in names)
    assert not any(name.endswith(".bin") for name in names)
    # A dry run of an archive counts, writes nothing.
    planned = restore_json(backed_up, "--archive", str(tmp_path / "x.tar.zst"), "--dry-run")
    assert planned["files_written"] == 3 and not (tmp_path / "x.tar.zst").exists()
    # --overwrite is for directories.
    wrong = backed_up.cli(
        "restore", "alpha:latest", "--archive", str(tmp_path / "y.tar"), "--overwrite", "never"
    )
    assert wrong.code == 1 and "--force" in wrong.stderr


def test_zip_archive_renames_a_backslash_and_says_so(
    applied: Site, source: Path, tmp_path: Path
) -> None:
    # `\` is an ordinary character on Linux but a separator to zip readers on Windows.
    (source / "docs" / "a\\..\\..\\evil").write_text("kept\n")
    assert applied.cli("backup", "alpha").code == 0
    archive = tmp_path / "out.zip"
    result = applied.cli("restore", "alpha:latest", "--archive", str(archive), "--json")
    assert result.code == 0, result.stderr
    assert "archived as" in result.stderr and "Windows" in result.stderr
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        evil = next(name for name in names if name.endswith("docs/a_.._.._evil"))
        assert zipped.read(evil) == b"kept\n"
    assert not any("\\" in name for name in names)
    (renamed,) = result.json()["renamed"]
    assert renamed["archived_as"].endswith("docs/a_.._.._evil")
    planned = restore_json(applied, "--archive", str(tmp_path / "x.zip"), "--dry-run")
    (listed,) = [entry for entry in planned["entries"] if "archived_as" in entry]
    assert listed["path"].endswith("docs/a\\..\\..\\evil")
    assert listed["archived_as"].endswith("docs/a_.._.._evil")
    # A tar keeps the name as it is.
    tar_path = tmp_path / "out.tar"
    as_tar = applied.cli("restore", "alpha:latest", "--archive", str(tar_path))
    assert as_tar.code == 0 and "archived as" not in as_tar.stderr
    with tarfile.open(tar_path) as tar:
        assert any(name.endswith("docs/a\\..\\..\\evil") for name in tar.getnames())
