"""Differences between two snapshots' trees.

Unchanged subtrees have the same tree id (trees are content-addressed), so they are
skipped without being read: a diff costs in proportion to what changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from costor.store.pool import Pool
from costor.store.tree import DIR, Node

METADATA_FIELDS = ("mode", "uid", "gid", "mtime_ns", "target", "rdev", "xattrs", "type")


@dataclass(frozen=True)
class Difference:
    change: str  # added | removed | modified (content) | metadata
    path: str
    type: str
    size_before: int = 0
    size_after: int = 0

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
                yield _difference("modified", path, new, old.size, new.size)
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


def _metadata_differs(old: Node, new: Node) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in METADATA_FIELDS)


def _difference(change: str, path: bytes, node: Node, before: int, after: int) -> Difference:
    return Difference(change, path.decode("utf-8", "backslashreplace"), node.type, before, after)
