"""Looking into snapshots without restoring them: ``costor ls`` (what a snapshot holds
under a path) and ``costor diff`` (what changed between two snapshots).

Both resolve snapshots as restore does (an id, a unique prefix or ``CLIENT:latest``,
across every pool) and read trees only: nothing is written, no lease is taken.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from costor.errors import ObjectNotFound, PathNotInSnapshot, SnapshotNotFound, UsageError
from costor.ops.context import Context
from costor.ops.restore.snapshots import open_named_pool, resolve
from costor.store.diff import Difference, diff_trees
from costor.store.pool import Pool
from costor.store.snapshot import Snapshot
from costor.store.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, IMAGE, SOCKET, SYMLINK, Node

CHANGE_KINDS = ("added", "removed", "modified", "metadata")
# The first letter of ``ls -l`` per entry type; an image, which ``ls`` never shows, is
# ``i`` (the letter of the helper protocol's image entries, costor/protocol.py).
TYPE_LETTERS = {
    FILE: "-",
    DIR: "d",
    SYMLINK: "l",
    FIFO: "p",
    CHARDEV: "c",
    BLOCKDEV: "b",
    SOCKET: "s",
    IMAGE: "i",
}
FULL_ID = re.compile(r"[0-9a-f]{64}")


@dataclass
class Listing:
    """The entries under ``path`` in one snapshot, depth first: ``(absolute path, node)``.
    A path names a directory (its own entry first, unless it is the root) or a file.
    ``depth``: how many levels below ``path`` were listed (None: all of them)."""

    snapshot_id: str
    path: str
    entries: list[tuple[str, Node]] = field(default_factory=list)
    depth: int | None = None

    def to_json(self) -> list[dict[str, Any]]:
        return [_entry_json(path, node) for path, node in self.entries]


@dataclass
class SnapshotDiff:
    """What changed from ``first`` to ``second``, in tree order."""

    first: str
    second: str
    changes: list[Difference] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {kind: 0 for kind in CHANGE_KINDS}
        for change in self.changes:
            counts[change.change] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "second": self.second,
            "changes": [
                {
                    "change": d.change,
                    "path": d.path,
                    "type": d.type,
                    "size_before": d.size_before,
                    "size_after": d.size_after,
                    **({} if d.changed_bytes is None else {"changed_bytes": d.changed_bytes}),
                }
                for d in self.changes
            ],
            **self.counts(),
        }


def list_snapshot(
    ctx: Context,
    *,
    snapshot: str,
    path: str = "/",
    depth: int | None = None,
    pool: str | None = None,
) -> Listing:
    """What ``snapshot`` holds under ``path``: everything below it (``costor ls``), or
    with ``depth`` only that many levels (1: a directory's own entries, so browsing one
    directory reads one tree, not its whole subtree; 0: the entry itself). ``pool``: the
    pool to look in (a caller that resolved the snapshot already: a full id there is
    read directly, without listing the pool's snapshots again). Raises
    :class:`PathNotInSnapshot` when ``path`` is not in the snapshot."""
    if depth is not None and depth < 0:
        raise UsageError(message=f"depth must be 0 or more, not {depth}")
    if pool is not None and FULL_ID.fullmatch(snapshot):
        pool_, found = _by_full_id(ctx, pool, snapshot)
    else:
        _name, pool_, found = resolve(ctx, snapshot, pool=pool, load_index=True)
    return _listing(pool_, found, path, depth)


def _by_full_id(ctx: Context, name: str, snapshot_id: str) -> tuple[Pool, Snapshot]:
    """The snapshot of that id in pool ``name``, its index loaded. A manifest is named
    by its hash and read once per process, so this costs no listing and no read."""
    opened = open_named_pool(ctx, name)
    try:
        found = opened.load_snapshot(snapshot_id)
    except ObjectNotFound:
        raise SnapshotNotFound(ref=snapshot_id) from None
    ctx.load_index(opened)
    return opened, found


def _listing(pool: Pool, found: Snapshot, path: str, depth: int | None) -> Listing:
    """The entries of ``found`` under ``path``, down to ``depth`` levels."""
    node = pool.find_node(bytes.fromhex(found.tree), path)
    if node is None:
        raise PathNotInSnapshot(path=path, snapshot=found.id[:12])
    base = "/" + "/".join(p for p in path.split("/") if p)
    listing = Listing(snapshot_id=found.id, path=base, depth=depth)
    if node.name:
        listing.entries.append((base, node))
    if node.type == "dir" and node.subtree is not None and depth != 0:
        listing.entries.extend(_walk(pool, node.subtree, base.rstrip("/"), depth))
    return listing


def _walk(pool: Pool, tree_id: bytes, prefix: str, depth: int | None) -> Iterator[tuple[str, Node]]:
    """The nodes under a tree, depth first, named ``prefix/…`` (``surrogateescape``
    keeps a name's undecodable bytes), down to ``depth`` levels (None: all)."""
    deeper = None if depth is None else depth - 1
    for child in pool.load_tree(tree_id):
        path = prefix + "/" + child.name.decode("utf-8", "surrogateescape")
        yield path, child
        if child.type == "dir" and child.subtree is not None and deeper != 0:
            yield from _walk(pool, child.subtree, path, deeper)


def diff_snapshots(ctx: Context, *, first: str, second: str) -> SnapshotDiff:
    _a, pool_a, snapshot_a = resolve(ctx, first)
    _b, pool_b, snapshot_b = resolve(ctx, second)
    if pool_a.uuid == pool_b.uuid:
        pool_b = pool_a  # one pool resolved twice: one object, so equal subtrees are skipped
    changes = list(
        diff_trees(pool_a, bytes.fromhex(snapshot_a.tree), pool_b, bytes.fromhex(snapshot_b.tree))
    )
    return SnapshotDiff(first=snapshot_a.id, second=snapshot_b.id, changes=changes)


def mode_text(node_type: str, mode: int) -> str:
    """A mode as ``ls -l`` writes it (``drwxr-x---``), with an image's ``i`` and ``?``
    for a type this version does not know."""
    letter = TYPE_LETTERS.get(node_type, "?")
    return letter + stat.filemode(stat.S_IFREG | (mode & 0o7777))[1:]


def _entry_json(path: str, node: Node) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "path": path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        "type": node.type,
        "size": node.size,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "mtime_ns": node.mtime_ns,
    }
    if node.target is not None:
        doc["target"] = node.target.decode("utf-8", "backslashreplace")
    if node.type == IMAGE:
        doc["image"] = image_facts(node)
    return doc


# What an image entry records of how it was read (costor/store/tree.py), by key and the
# type a value must have to be shown: a snapshot holds what a host sent, so anything
# else in it (another key, a nested object) is left out of listings.
IMAGE_FACTS: dict[str, type] = {
    "method": str,
    "block_size": int,
    "source": str,
    "source_id": str,
    "full_read": str,
}


def image_facts(node: Node) -> dict[str, Any]:
    """An image's ``image`` facts with their expected types only (``method`` always:
    "unknown" when missing)."""
    recorded = node.image if isinstance(node.image, dict) else {}
    facts: dict[str, Any] = {"method": "unknown"}
    for key, kind in IMAGE_FACTS.items():
        value = recorded.get(key)
        if isinstance(value, kind) and not isinstance(value, bool):
            facts[key] = value
    return facts
