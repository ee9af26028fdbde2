"""Tree blobs: one per directory, a canonical JSON document listing its entries.

Canonical = keys sorted, no whitespace, entries sorted by the raw bytes of their names,
so an unchanged directory encodes to the same bytes and deduplicates. Names and symlink
targets are bytes on POSIX; valid UTF-8 is stored as a string, anything else as base64
under ``name_b64`` / ``target_b64``, so no name is ever mangled.

Access times are deliberately not stored: reading a file changes them, and storing them
would make every tree new on every backup (restore sets atime = mtime).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from costor.util import jsonfast

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = (
    "file",
    "dir",
    "symlink",
    "fifo",
    "chardev",
    "blockdev",
    "socket",
)
# An image: a block device or a file named in a client's ``images``, read as one byte
# stream. Its content is data blobs like a file's (cut by the same chunker, so images
# dedup against each other and against file data); ``image`` says how it was read.
IMAGE = "image"
CONTENT_TYPES = (FILE, IMAGE)  # the types whose ``content`` lists data blobs


@dataclass(slots=True)
class Node:
    # slots: no per-node __dict__ (56 bytes less of ~630 a file's node; a backup and a
    # restore hold the nodes of the directories in progress, a pull those of a parent).
    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    content: list[bytes] = field(default_factory=list)  # data blob ids (files)
    subtree: bytes | None = None  # tree blob id (directories)
    target: bytes | None = None  # symlink target
    rdev: int = 0  # device number (device nodes)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    # Images only: how the image was read. Keys (all optional but ``method``):
    # ``method`` ("full": every byte read; "blocks": blocks compared with the parent's;
    # "thin_delta": only the ranges LVM's thin_delta named), ``block_size`` (the
    # comparison granularity, bytes), ``source`` ("blockdev" or "file"), ``source_id``
    # (what identifies the snapshot read, for the next changed-block method),
    # ``full_read`` (why a changed-block method fell back to a full read).
    image: dict[str, Any] | None = None

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def to_dict(self) -> dict[str, Any]:
        # Keys are added in sorted order, so the encoder need not sort them (the bytes are
        # the same: tests/store/test_tree.py); a pull encodes every changed directory.
        doc: dict[str, Any] = {}
        if self.type in CONTENT_TYPES:
            doc["content"] = [blob.hex() for blob in self.content]
        doc["ctime_ns"] = self.ctime_ns
        doc["device"] = self.device
        doc["gid"] = self.gid
        doc["group"] = self.group
        if self.image is not None:
            doc["image"] = {key: self.image[key] for key in sorted(self.image)}
        doc["inode"] = self.inode
        doc["links"] = self.links
        doc["mode"] = self.mode
        doc["mtime_ns"] = self.mtime_ns
        _put_bytes(doc, "name", self.name)
        if self.rdev:
            doc["rdev"] = self.rdev
        if self.type in CONTENT_TYPES:
            doc["size"] = self.size
        if self.subtree is not None:
            doc["subtree"] = self.subtree.hex()
        if self.target is not None:
            _put_bytes(doc, "target", self.target)
        doc["type"] = self.type
        doc["uid"] = self.uid
        doc["user"] = self.user
        if self.xattrs:
            doc["xattrs"] = {
                key: base64.b64encode(value).decode() for key, value in sorted(self.xattrs.items())
            }
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Node:
        # Written for speed: a pull decodes every directory of its parent. Arguments by
        # position, in the order of the fields above (1.3 µs a node, against 2.2 µs by
        # keyword and 3.6 µs with a helper call per key); tests/store/test_tree.py
        # round-trips a node whose fields all differ.
        get = doc.get
        name, subtree, target, xattrs = get("name"), get("subtree"), get("target"), get("xattrs")
        return cls(
            name.encode() if name is not None else (_get_bytes(doc, "name") or b""),
            doc["type"],
            get("mode", 0),
            get("uid", 0),
            get("gid", 0),
            get("user", ""),
            get("group", ""),
            get("mtime_ns", 0),
            get("ctime_ns", 0),
            get("size", 0),
            get("inode", 0),
            get("device", 0),
            get("links", 1),
            [bytes.fromhex(blob) for blob in get("content", ())],
            bytes.fromhex(subtree) if subtree else None,
            target.encode() if target is not None else _get_bytes(doc, "target"),
            get("rdev", 0),
            {k: base64.b64decode(v) for k, v in xattrs.items()} if xattrs else {},
            get("image"),
        )


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda node: node.name)
    return encode_docs([node.to_dict() for node in ordered])


def decode_tree(data: bytes) -> list[Node]:
    return [Node.from_dict(doc) for doc in decode_docs(data)]


def encode_docs(docs: list[dict[str, Any]]) -> bytes:
    """A tree of node documents already in canonical form and order: those of
    :meth:`Node.to_dict`, or as :func:`decode_docs` returned them (JSON objects keep
    their keys' order, so a document read back encodes to the same bytes)."""
    return jsonfast.dumps({"nodes": docs})


def decode_docs(data: bytes) -> list[dict[str, Any]]:
    """A tree's node documents, without making nodes of them (a pull that changes a few
    entries of a directory copies the others as they are)."""
    docs: list[dict[str, Any]] = jsonfast.loads(data)["nodes"]
    return docs


# --- one entry of an encoded tree, without decoding the others ---------------------------
#
# A pull that changed one file of a 100-entry directory decoded all 100 documents of its
# parent's tree and encoded them again (~0.3 ms a directory, most of an incremental
# pull's tree work). In the canonical encoding an entry can be found and replaced in the
# bytes instead: the tree is ``{"nodes":[DOC,DOC,…]}``, and ``,{"`` occurs only between
# two documents (inside a JSON string every ``"`` is escaped, so ``{"`` never occurs in
# one; the only nested object, ``xattrs``, follows a ``:``). A document's name is its
# ``"name":"…",`` key (or ``"name_b64"``); what these functions find is checked by
# decoding that document, and anything unexpected returns None: the caller decodes the
# whole tree instead.

_TREE_START, _TREE_END, _BETWEEN = b'{"nodes":[', b"]}", b',{"'


def searchable(data: bytes) -> bool:
    """Whether :func:`find_doc` may look in ``data``: a non-empty tree, as encoded."""
    return data.startswith(_TREE_START + b"{") and data.endswith(b"}" + _TREE_END)


def find_doc(data: bytes, name: bytes) -> tuple[int, int, dict[str, Any]] | None:
    """Where the document of entry ``name`` is in an encoded tree (``data[start:end]``),
    and the document; None if not found this way (absent, or not in canonical form)."""
    if not searchable(data):
        return None
    try:
        key = b'"name":' + jsonfast.dumps(name.decode("utf-8")) + b","
    except UnicodeDecodeError:
        key = b'"name_b64":"' + base64.b64encode(name) + b'",'
    at = data.find(key)
    if at < 0:
        return None
    start = data.rfind(_BETWEEN, 0, at)
    start = len(_TREE_START) if start < 0 else start + 1
    end = data.find(_BETWEEN, at)
    end = len(data) - len(_TREE_END) if end < 0 else end
    try:
        doc = jsonfast.loads(data[start:end])
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("type") is None or doc_name(doc) != name:
        return None
    return start, end, doc


def replace_docs(data: bytes, replacements: list[tuple[int, int, bytes]]) -> bytes:
    """An encoded tree with documents replaced (``(start, end, new bytes)`` of
    :func:`find_doc`, at most one per document): the bytes :func:`encode_docs` makes of
    the same documents when ``data`` is canonical."""
    parts, position = [], 0
    for start, end, doc in sorted(replacements):
        parts += [data[position:start], doc]
        position = end
    parts.append(data[position:])
    return b"".join(parts)


def doc_name(doc: dict[str, Any]) -> bytes:
    """The raw name of a node document."""
    name = doc.get("name")
    return name.encode() if name is not None else (_get_bytes(doc, "name") or b"")


def _put_bytes(doc: dict[str, Any], key: str, value: bytes) -> None:
    try:
        doc[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        doc[f"{key}_b64"] = base64.b64encode(value).decode()


def _get_bytes(doc: dict[str, Any], key: str) -> bytes | None:
    if key in doc:
        return str(doc[key]).encode("utf-8")
    if f"{key}_b64" in doc:
        return base64.b64decode(doc[f"{key}_b64"])
    return None
