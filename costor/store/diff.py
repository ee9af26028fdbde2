"""Differences between two snapshots' trees.

Unchanged subtrees have the same tree id (trees are content-addressed), so they are
skipped without being read: a diff costs in proportion to what changed.

A file or an image whose content changed also says how many of its bytes are new
(``changed_bytes``: the lengths of its blobs that the old content does not hold, read
from the pool's index): for an image, whose size rarely changes, that is what moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from costor.store.pool import Pool
from costor.store.tree import CONTENT_TYPES, DIR, Node

METADATA_FIELDS = ("mode", "uid", "gid", "mtime_ns", "target", "rdev", "xattrs", "type")


@dataclass(frozen=True)
class Difference:
    change: str  # added | removed | modified (content) | metadata
    path: str
    type: str
    size_before: int = 0
    size_after: int = 0
    # modified files and images: bytes of the new content in blobs the old one lacks
    # (None: not known, e.g. a blob the index does not list)
    changed_bytes: int | None = None

    @property
    def symbol(self) -> str:
        return {"added": "+", "removed": "-", "modified": "M", "metadata": "U"}[self.change]


def diff_trees(
    pool_a: Pool, tree_a: bytes, pool_b: Pool, tree_b: bytes, prefix: bytes = b""
) -> Iterator[Difference]:
    if tree_a == tree_b and pool_a is pool_b:
        return
    before = {n.name: n for n in pool_a.load_tree(tree_a)}
    after = {n.name: n for n in pool_b.load_tree(tree_b)}
    for name in sorted(before.keys() | after.keys()):
        path = prefix + b"/" + name
        old, new = before.get(name), after.get(name)
        if new is None and old is not None:
            yield from _whole(pool_a, old, path, "removed")
        elif old is None and new is not None:
            yield from _whole(pool_b, new, path, "added")
        elif old is not None and new is not None:
            if old.type != new.type:
                yield from _whole(pool_a, old, path, "removed")
                yield from _whole(pool_b, new, path, "added")
                continue
            if old.type == DIR:
                if _metadata_differs(old, new):
                    yield _difference("metadata", path, new, old.size, new.size)
                if old.subtree and new.subtree:
                    yield from diff_trees(pool_a, old.subtree, pool_b, new.subtree, path)
            elif old.content != new.content:
                modified = _difference("modified", path, new, old.size, new.size)
                if new.type in CONTENT_TYPES:
                    modified = replace(modified, changed_bytes=_new_bytes(pool_b, old, new))
                yield modified
            elif _metadata_differs(old, new):
                yield _difference("metadata", path, new, old.size, new.size)


def _whole(pool: Pool, node: Node, path: bytes, change: str) -> Iterator[Difference]:
    yield _difference(
        change,
        path,
        node,
        node.size if change == "removed" else 0,
        node.size if change == "added" else 0,
    )
    if node.type == DIR and node.subtree is not None:
        for relative, child in pool.walk(node.subtree):
            yield _difference(
                change,
                path + b"/" + relative,
                child,
                child.size if change == "removed" else 0,
                child.size if change == "added" else 0,
            )


def _new_bytes(pool: Pool, old: Node, new: Node) -> int | None:
    held = set(old.content)
    lengths: dict[bytes, int] = {}
    total = 0
    for blob in new.content:
        if blob in held:
            continue
        if blob not in lengths:
            location = pool.index.lookup(blob) or pool.fallback.lookup(blob)
            if location is None:
                return None
            lengths[blob] = location.raw_length
        total += lengths[blob]
    return total


def _metadata_differs(old: Node, new: Node) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in METADATA_FIELDS)


def _difference(change: str, path: bytes, node: Node, before: int, after: int) -> Difference:
    return Difference(change, path.decode("utf-8", "backslashreplace"), node.type, before, after)
