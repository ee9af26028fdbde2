"""What the host stream knows of the parent snapshot: its files' stat data for the
producer (:class:`ParentFile`), and a directory's entries read from its stored tree
(:class:`PreviousTree`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from costor.errors import DataCorruption
from costor.protocol import LARGE_FILE
from costor.store.pool import Pool
from costor.store.tree import DIR, FILE, IMAGE, Node, decode_docs, doc_name, find_doc, searchable
from costor.util import jsonfast


@dataclass(frozen=True)
class ParentFile:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    blocks: bytes | None  # block hashes of a large file, for in-place diffs


def parent_files(
    pool: Pool, tree: bytes, blocks: Callable[[list[bytes]], bytes | None]
) -> Iterator[ParentFile]:
    """Every regular file and directory below ``tree`` with its stat data, and the block
    hashes of large files (``blocks``: from the digest index). A file whose content
    needs a blob recorded as damaged (and held nowhere else) is left out: the producer
    then sends it again, even from a directory it walks sparse, so the pool gets a
    good copy (costor/store/damage.py)."""
    lost = {blob for blob, _pack in pool.damage if blob not in pool.index}
    for path, node in _parent_nodes(pool, tree, b""):
        if node.type not in (FILE, DIR):
            continue
        if lost and node.type == FILE and not lost.isdisjoint(node.content):
            continue
        yield ParentFile(
            os.fsdecode(b"/" + path.lstrip(b"/")),
            node.size,
            node.mtime_ns,
            node.ctime_ns,
            node.inode,
            blocks(node.content) if node.size >= LARGE_FILE else None,
        )


def _parent_nodes(pool: Pool, tree: bytes, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
    """Pool.walk, past trees it cannot read: a damaged parent only costs sending the
    files below them again (the stream's ``_previous`` finds them unreadable too)."""
    try:
        nodes = pool.load_tree(tree)
    except DataCorruption:
        return
    for node in nodes:
        path = prefix + b"/" + node.name if prefix else node.name
        yield path, node
        if node.type == DIR and node.subtree is not None:
            yield from _parent_nodes(pool, node.subtree, path)


class PreviousTree:
    """A directory's entries in the parent snapshot, from its stored tree. An entry asked
    for by name is found in the tree's bytes and decoded alone (tree.py ``find_doc``);
    all of them are decoded only when a listing is needed (``docs``, ``positions``)."""

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data
        self._docs: list[dict[str, Any]] | None = None if data is not None else []
        self._positions: dict[bytes, int] | None = None if data is not None else {}
        self._nodes: dict[bytes, Node] = {}
        self.spans: dict[bytes, tuple[int, int]] = {}  # names found in the bytes
        if data is not None and not searchable(data):
            self._docs = decode_docs(data)  # now: a tree that does not decode fails here

    @property
    def docs(self) -> list[dict[str, Any]]:
        if self._docs is None:
            assert self.data is not None
            self._docs = decode_docs(self.data)
        return self._docs

    @property
    def positions(self) -> dict[bytes, int]:
        if self._positions is None:
            self._positions = {doc_name(doc): i for i, doc in enumerate(self.docs)}
        return self._positions

    def get(self, name: bytes) -> Node | None:
        node = self._nodes.get(name)
        if node is None:
            doc = self._doc(name)
            if doc is None:
                return None
            node = self._nodes[name] = Node.from_dict(doc)
        return node

    def _doc(self, name: bytes) -> dict[str, Any] | None:
        if self._positions is None and self.data is not None:
            found = find_doc(self.data, name)
            if found is not None:
                start, end, doc = found
                self.spans[name] = (start, end)
                return doc
        position = self.positions.get(name)  # not found so: the whole listing decides
        return None if position is None else self.docs[position]

    def nodes(self) -> list[Node]:
        return [self.get(name) or Node(name=name, type="") for name in self.positions]


NOTHING = PreviousTree()  # a directory the parent did not have


def splice(previous: PreviousTree, nodes: list[Node]) -> list[tuple[int, int, bytes]] | None:
    """A sparse directory's entries sent (``nodes``) as replacements in the parent's tree
    bytes, when each replaces an entry found in those bytes (no name added or gone): the
    other documents are neither decoded nor encoded again. An empty list: nothing
    changed. None: :func:`merge_docs` decides."""
    if previous.data is None:
        return None
    replacements = []
    for node in nodes:
        span = previous.spans.get(node.name)
        if not node.type or span is None:
            return None
        doc = jsonfast.dumps(node.to_dict())
        if previous.data[span[0] : span[1]] != doc:
            replacements.append((span[0], span[1], doc))
    return replacements


def merge_docs(
    previous: PreviousTree, nodes: list[Node], removed: list[bytes]
) -> tuple[list[dict[str, Any]], bool, bool]:
    """A sparse directory's documents: the parent's, with the entries that were sent
    (``nodes``; one without a type is gone) and without those ``removed`` (failed, and
    not sent: a directory it cannot list is). Also whether its names changed, and
    whether an entry was replaced."""
    docs = list(previous.docs)
    gone: set[int] = set()
    added: list[dict[str, Any]] = []
    replaced = False
    for node in nodes:
        position = previous.positions.get(node.name)
        if not node.type:
            if position is not None:
                gone.add(position)
            continue
        doc = node.to_dict()
        if position is None:
            added.append(doc)
        elif docs[position] != doc:
            docs[position] = doc
            replaced = True
    sent = {node.name for node in nodes if node.type}
    for name in removed:
        position = previous.positions.get(name)
        if position is not None and name not in sent:
            gone.add(position)
    if gone or added:
        docs = [doc for i, doc in enumerate(docs) if i not in gone] + added
        docs.sort(key=doc_name)
    return docs, bool(gone or added), replaced


def parent_image(pool: Pool, tree: bytes, path: str) -> Node | None:
    """The image node at ``path`` in the parent snapshot's ``tree`` (None: not there, not
    an image, or a tree on the way that cannot be read)."""
    node: Node | None = None
    current: bytes | None = tree
    for name in os.fsencode(path).strip(b"/").split(b"/"):
        if current is None:
            return None
        try:
            node = PreviousTree(pool.read_blob(current)).get(name)
        except DataCorruption:
            return None
        if node is None:
            return None
        current = node.subtree if node.type == DIR else None
    return node if node is not None and node.type == IMAGE else None
