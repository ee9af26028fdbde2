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
import json
from dataclasses import dataclass, field
from typing import Any

FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET = (
    "file",
    "dir",
    "symlink",
    "fifo",
    "chardev",
    "blockdev",
    "socket",
)


@dataclass
class Node:
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

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "mode": self.mode}
        _put_bytes(doc, "name", self.name)
        doc.update(
            uid=self.uid,
            gid=self.gid,
            user=self.user,
            group=self.group,
            mtime_ns=self.mtime_ns,
            ctime_ns=self.ctime_ns,
            inode=self.inode,
            device=self.device,
            links=self.links,
        )
        if self.type == FILE:
            doc["size"] = self.size
            doc["content"] = [blob.hex() for blob in self.content]
        if self.subtree is not None:
            doc["subtree"] = self.subtree.hex()
        if self.target is not None:
            _put_bytes(doc, "target", self.target)
        if self.rdev:
            doc["rdev"] = self.rdev
        if self.xattrs:
            doc["xattrs"] = {
                key: base64.b64encode(value).decode() for key, value in sorted(self.xattrs.items())
            }
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Node:
        subtree = doc.get("subtree")
        target = _get_bytes(doc, "target")
        return cls(
            name=_get_bytes(doc, "name") or b"",
            type=doc["type"],
            mode=doc.get("mode", 0),
            uid=doc.get("uid", 0),
            gid=doc.get("gid", 0),
            user=doc.get("user", ""),
            group=doc.get("group", ""),
            mtime_ns=doc.get("mtime_ns", 0),
            ctime_ns=doc.get("ctime_ns", 0),
            size=doc.get("size", 0),
            inode=doc.get("inode", 0),
            device=doc.get("device", 0),
            links=doc.get("links", 1),
            content=[bytes.fromhex(blob) for blob in doc.get("content", [])],
            subtree=bytes.fromhex(subtree) if subtree else None,
            target=target,
            rdev=doc.get("rdev", 0),
            xattrs={k: base64.b64decode(v) for k, v in doc.get("xattrs", {}).items()},
        )


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda node: node.name)
    return json.dumps(
        {"nodes": [node.to_dict() for node in ordered]},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def decode_tree(data: bytes) -> list[Node]:
    return [Node.from_dict(doc) for doc in json.loads(data)["nodes"]]


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
