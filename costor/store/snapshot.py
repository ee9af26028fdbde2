"""Snapshot manifests: the last object a backup writes (``snapshots/<hash>``, sealed JSON).

A snapshot's id is the BLAKE3 hash of its stored bytes. It names the client, the time,
the backed-up paths, the root tree and the backup's counters.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

COUNTER_FIELDS = (
    "files_new",
    "files_changed",
    "files_unmodified",
    "files_failed",
    "files_deduplicated",  # content found in the pool by digest, not sent (remote hosts)
    "dirs",
    "images",  # block devices and image files stored (their bytes are in the byte counts)
    "entries_omitted",  # files and directories an SSH pull's sparse walk did not send
    "bytes_read",
    "bytes_processed",
    "bytes_added",
    "bytes_added_raw",
    "bytes_transferred",
    "blobs_added",
    "blobs_not_compressed",
)


@dataclass
class Snapshot:
    client: str
    time: str  # RFC 3339, UTC, microseconds
    paths: list[str]
    tree: str  # root tree blob id, hex
    hostname: str = ""
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    id: str = ""  # filled from the object name, not stored
    taken_as: str | None = None  # not stored: the name in the manifest, if since renamed

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc.pop("id")
        doc.pop("taken_as")
        doc["version"] = 1
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, snapshot_id: str) -> Snapshot:
        doc: dict[str, Any] = json.loads(data)
        doc.pop("version", None)
        return cls(id=snapshot_id, **doc)

    def summary(self) -> dict[str, Any]:
        """The ``snapshots --json`` document (a user-facing contract: scripts read it)."""
        return {
            "id": self.id,
            "short_id": self.id[:12],
            "client": self.client,
            **({"taken_as": self.taken_as} if self.taken_as else {}),
            "time": self.time,
            "paths": self.paths,
            "hostname": self.hostname,
            "parent": self.parent,
            "tree": self.tree,
            "duration_s": round(self.duration_s, 3),
            **{name: self.counters.get(name, 0) for name in COUNTER_FIELDS},
        }
