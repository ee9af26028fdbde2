"""costor.ops.restore.browse: listing a snapshot and comparing two, called without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures import Site

from costor.errors import PathNotInSnapshot, SnapshotNotFound
from costor.ops.backup.run import run_backup
from costor.ops.context import Context
from costor.ops.restore.browse import diff_snapshots, list_snapshot


def test_list_snapshot_under_a_directory_and_a_file(applied: Site, source: Path) -> None:
    ctx = Context(applied.inventory)
    taken = run_backup(ctx, "alpha", trigger=None)

    listing = list_snapshot(ctx, snapshot="alpha:latest", path=str(source / "docs"))
    assert listing.snapshot_id == taken.snapshot.id
    paths = [path for path, _node in listing.entries]
    assert paths[0] == str(source / "docs")  # the directory itself first
    assert set(paths) == {
        str(source / "docs"),
        str(source / "docs" / "readme.txt"),
        str(source / "docs" / "deep"),
        str(source / "docs" / "deep" / "er"),
        str(source / "docs" / "deep" / "er" / "data.bin"),
    }
    documents = {doc["path"]: doc for doc in listing.to_json()}
    assert documents[str(source / "docs" / "readme.txt")]["size"] == len("hello costor\n") * 100
    assert documents[str(source / "docs" / "deep")]["type"] == "dir"

    one = list_snapshot(ctx, snapshot=taken.snapshot.id[:10], path=str(source / "empty"))
    assert [(p, n.type, n.size) for p, n in one.entries] == [(str(source / "empty"), "file", 0)]


def test_list_snapshot_root_has_no_entry_of_its_own(applied: Site, source: Path) -> None:
    ctx = Context(applied.inventory)
    run_backup(ctx, "alpha", trigger=None)
    listing = list_snapshot(ctx, snapshot="alpha:latest")
    paths = [path for path, _node in listing.entries]
    assert "/" not in paths
    assert str(source / "docs" / "readme.txt") in paths


def test_list_snapshot_refuses_a_path_it_does_not_hold(applied: Site, source: Path) -> None:
    ctx = Context(applied.inventory)
    run_backup(ctx, "alpha", trigger=None)
    with pytest.raises(PathNotInSnapshot):
        list_snapshot(ctx, snapshot="alpha:latest", path=str(source / "nothing-here"))
    with pytest.raises(SnapshotNotFound):
        list_snapshot(ctx, snapshot="ffffffff")


def test_diff_snapshots_counts_each_kind_of_change(applied: Site, source: Path) -> None:
    ctx = Context(applied.inventory)
    first = run_backup(ctx, "alpha", trigger=None)
    (source / "docs" / "new.txt").write_text("new\n")
    (source / "empty").unlink()
    (source / "docs" / "readme.txt").write_text("changed\n")
    second = run_backup(ctx, "alpha", trigger=None)

    outcome = diff_snapshots(ctx, first=first.snapshot.id, second="alpha:latest")
    assert (outcome.first, outcome.second) == (first.snapshot.id, second.snapshot.id)
    changes = {(d.change, d.path) for d in outcome.changes}
    assert {
        ("added", str(source / "docs" / "new.txt")),
        ("removed", str(source / "empty")),
        ("modified", str(source / "docs" / "readme.txt")),
    } <= changes
    document = outcome.to_json()
    assert document["added"] == 1 and document["removed"] == 1 and document["modified"] == 1
    assert len(document["changes"]) == sum(outcome.counts().values())

    same = diff_snapshots(ctx, first="alpha:latest", second=second.snapshot.id)
    assert same.changes == [] and same.counts() == dict.fromkeys(same.counts(), 0)
