"""The site's side of a helper session: the frames of the before hooks, the walk, the
fetches and the after hooks (:mod:`costor.protocol`), fed to a
:class:`costor.transport.source.Consumer`. The use case around it (the HELLO, the
parent's frames and their cache, the snapshot) is :mod:`costor.ops.backup.pull`."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costor import protocol
from costor.errors import BackupError, HookFailed, RemoteError
from costor.util import jsonfast

if TYPE_CHECKING:
    from costor.transport.source import Consumer, ContentWriter
    from costor.transport.ssh import HelperProcess, Remote

FETCH_BATCH = 500  # paths per FETCH command
DELTA_BATCH = 20  # paths per DELTA command


@dataclass(frozen=True)
class ParentSent:
    """What the helper was told of the parent: its fingerprints (12 bytes each) and its
    directories' hashes (8 bytes each), in the order sent."""

    fingerprints: bytes = b""
    dir_hashes: bytes = b""


def before_hooks(client: str, remote: Remote, helper: HelperProcess) -> list[dict[str, Any]]:
    """The before hooks' results; one failing ends the backup (after the after hooks)."""
    hooks: list[dict[str, Any]] = []
    while True:
        kind, payload = helper.recv()
        if kind == protocol.HOOK:
            hooks.append(json.loads(payload))
            continue
        break
    if kind == protocol.HOOK_FAILED:
        failed = hooks[-1] if hooks else {"command": "?", "rc": "?", "stderr": ""}
        after_hooks(helper, hooks)  # they run whatever happened before
        helper.send(protocol.QUIT)
        raise HookFailed(
            client=client,
            phase="before",
            command=failed["command"],
            rc=failed["rc"],
            stderr=(failed.get("stderr") or "").strip() or "(no stderr)",
        )
    if kind != protocol.READY:
        raise RemoteError(host=remote.target.display, reason=f"unexpected reply {kind!r}")
    return hooks


def fetch_missing(helper: HelperProcess, ingest: Consumer) -> None:
    """What the walk left to fetch: deltas, then whole files."""
    missing = ingest.missing()
    # Delta requests go in small batches, one ahead of the results read: the host reads
    # and compares one batch while the next is made here (each needs its base's blocks
    # hashed from the pool).
    ahead = 0
    for start in range(0, len(missing.delta), DELTA_BATCH):
        requests = [ingest.delta_request(p) for p in missing.delta[start : start + DELTA_BATCH]]
        helper.send(protocol.DELTA, json.dumps(requests).encode())
        ahead += 1
        if ahead > 1:
            read_fetched(helper, ingest)
            ahead -= 1
    for _ in range(ahead):
        read_fetched(helper, ingest)
    whole = missing.whole + ingest.retry
    for start in range(0, len(whole), FETCH_BATCH):
        helper.send(protocol.FETCH, json.dumps(whole[start : start + FETCH_BATCH]).encode())
        read_fetched(helper, ingest)


def read_walk(helper: HelperProcess, ingest: Consumer, parent: ParentSent) -> None:
    while True:
        kind, payload = helper.recv()
        if kind == protocol.ENTRIES:
            entries = jsonfast.loads(zlib.decompress(payload), errors="surrogateescape")
            for item in entries:
                entry = protocol.parse_entry(item)
                if ingest.entry(entry) == protocol.DATA_FOLLOWS:
                    read_content(helper, ingest.content(entry.path))
        elif kind == protocol.OMITTED:
            files, size, dirs = (int(n) for n in json.loads(payload))
            ingest.omitted(files, size, dirs)
        elif kind == protocol.MATCHED:
            seen = zlib.decompress(payload)
            count = len(parent.fingerprints) // protocol.FINGERPRINT_SIZE
            ingest.carry(parent.fingerprints, seen[:count], parent.dir_hashes, seen[count:])
        elif kind == protocol.WALK_DONE:
            return
        elif kind == protocol.ERROR:
            raise BackupError(
                client=ingest.client, reason=f"helper: {json.loads(payload)['error']}"
            )
        else:
            raise BackupError(client=ingest.client, reason=f"unexpected frame {kind!r} in the walk")


def read_fetched(helper: HelperProcess, ingest: Consumer) -> None:
    while True:
        kind, payload = helper.recv()
        if kind == protocol.START:
            entry = protocol.parse_entry(jsonfast.loads(payload, errors="surrogateescape"))
            sink = ingest.restart(entry)
            if sink is not None:
                read_content(helper, sink)
        elif kind == protocol.DONE:
            return
        elif kind == protocol.ERROR:
            raise BackupError(
                client=ingest.client, reason=f"helper: {json.loads(payload)['error']}"
            )
        else:
            raise BackupError(client=ingest.client, reason=f"unexpected frame {kind!r} in a fetch")


def read_content(helper: HelperProcess, sink: ContentWriter) -> None:
    while True:
        kind, payload = helper.recv()
        if kind == protocol.DATA:
            sink.write(protocol.unpack_data(payload))
        elif kind == protocol.BLOCK:
            (offset,) = protocol.BLOCK_OFFSET.unpack(payload[:8])
            sink.block(offset, protocol.unpack_data(payload[8:]))
        elif kind == protocol.END:
            sink.finish(json.loads(payload))
            return
        else:
            raise BackupError(client=sink.ingest.client, reason=f"unexpected frame {kind!r}")


def after_hooks(helper: HelperProcess, hooks: list[dict[str, Any]]) -> None:
    helper.send(protocol.AFTER)
    while True:
        kind, payload = helper.recv()
        if kind == protocol.HOOK:
            hooks.append(json.loads(payload))
        elif kind == protocol.DONE:
            return
        else:
            raise BackupError(client="?", reason=f"unexpected frame {kind!r} after the hooks")
