"""The site's side of a helper session: the frames of the before hooks, the walk, the
fetches and the after hooks (:mod:`costor.protocol`), fed to a
:class:`costor.transport.source.Consumer`. The use case around it (the HELLO, the
parent's frames and their cache, the snapshot) is :mod:`costor.ops.backup.pull`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costor import protocol
from costor.errors import BackupError, HookFailed, HostProtocolError, RemoteError
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


@contextmanager
def refusing(client: str) -> Iterator[None]:
    """What the host sent, read in this block, breaks the protocol or its limits: the
    backup fails with :class:`HostProtocolError` naming ``client``."""
    try:
        yield
    except protocol.Refused as refused:
        raise HostProtocolError(host=client, what=str(refused)) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        what = f"a frame that could not be read ({type(error).__name__}: {error})"
        raise HostProtocolError(host=client, what=what[:500]) from None


def before_hooks(
    client: str, remote: Remote, helper: HelperProcess, hooks_time: float, after_time: float
) -> list[dict[str, Any]]:
    """The before hooks' results; one failing ends the backup (after the after hooks).
    ``hooks_time``, ``after_time``: how long the hooks may run (the helper says nothing
    meanwhile), on top of the io timeout."""
    hooks: list[dict[str, Any]] = []
    while True:
        kind, payload = helper.recv(extra=hooks_time, doing="during the before hooks")
        if kind == protocol.HOOK:
            with refusing(client):
                hooks.append(_hook(json.loads(payload)))
            continue
        break
    if kind == protocol.HOOK_FAILED:
        failed = hooks[-1] if hooks else {"command": "?", "rc": "?", "stderr": ""}
        after_hooks(helper, hooks, after_time)  # they run whatever happened before
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


def _hook(document: Any) -> dict[str, Any]:
    """A HOOK frame's result, as the rest of the pull reads it."""
    if type(document) is not dict or not {"phase", "command", "rc"} <= document.keys():
        raise protocol.Refused(f"a hook result that is not one: {str(document)[:80]}")
    return document


def fetch_missing(helper: HelperProcess, ingest: Consumer) -> None:
    """What the walk left to fetch: deltas, then whole files."""
    missing = ingest.missing()
    batches: list[set[str]] = []  # the paths of each DELTA sent and not read yet
    # Delta requests go in small batches, one ahead of the results read: the host reads
    # and compares one batch while the next is made here (each needs its base's blocks
    # hashed from the pool).
    for start in range(0, len(missing.delta), DELTA_BATCH):
        requests = [ingest.delta_request(p) for p in missing.delta[start : start + DELTA_BATCH]]
        helper.send(protocol.DELTA, json.dumps(requests).encode())
        batches.append({str(p) for p, _size, _ranges in requests})
        if len(batches) > 1:
            read_fetched(helper, ingest, batches.pop(0))
    for batch in batches:
        read_fetched(helper, ingest, batch)
    whole = missing.whole + ingest.retry
    for start in range(0, len(whole), FETCH_BATCH):
        paths = whole[start : start + FETCH_BATCH]
        helper.send(protocol.FETCH, json.dumps(paths).encode())
        read_fetched(helper, ingest, set(paths))


def read_walk(helper: HelperProcess, ingest: Consumer, parent: ParentSent) -> None:
    """The walk's frames, each checked (:mod:`costor.protocol`) before it is used."""
    with refusing(ingest.client):
        _read_walk(helper, ingest, parent, protocol.WalkCheck())


def _read_walk(
    helper: HelperProcess, ingest: Consumer, parent: ParentSent, check: protocol.WalkCheck
) -> None:
    while True:
        kind, payload = helper.recv(doing="during the walk")
        if kind == protocol.ENTRIES:
            for entry in _entries(payload):
                check.entry(entry)
                if ingest.entry(entry) == protocol.DATA_FOLLOWS:
                    read_content(helper, ingest.content(entry.path))
        elif kind == protocol.OMITTED:
            files, size, dirs = (int(n) for n in json.loads(payload))
            ingest.omitted(files, size, dirs)
        elif kind == protocol.MATCHED:
            count = len(parent.fingerprints) // protocol.FINGERPRINT_SIZE
            expected = count + len(parent.dir_hashes) // protocol.DIR_HASH_SIZE
            seen = protocol.inflate(payload, expected, "a MATCHED frame")
            ingest.carry(parent.fingerprints, seen[:count], parent.dir_hashes, seen[count:])
        elif kind == protocol.WALK_DONE:
            return
        elif kind == protocol.ERROR:
            raise BackupError(
                client=ingest.client, reason=f"helper: {json.loads(payload)['error']}"
            )
        else:
            raise BackupError(client=ingest.client, reason=f"unexpected frame {kind!r} in the walk")


def _entries(payload: bytes) -> list[protocol.Entry]:
    """An ENTRIES frame's entries, checked one by one."""
    inflated = protocol.inflate(payload, protocol.MAX_INFLATED, "an ENTRIES frame")
    items = jsonfast.loads(inflated, errors="surrogateescape")
    if type(items) is not list or len(items) > protocol.MAX_ENTRIES:
        count = len(items) if type(items) is list else "no"
        raise protocol.Refused(
            f"an ENTRIES frame of {count} entries (at most {protocol.MAX_ENTRIES})"
        )
    return [protocol.parse_entry(item) for item in items]


def read_fetched(helper: HelperProcess, ingest: Consumer, asked: set[str]) -> None:
    """The answer to one FETCH or DELTA for the paths ``asked``: each at most once."""
    with refusing(ingest.client):
        _read_fetched(helper, ingest, asked)


def _read_fetched(helper: HelperProcess, ingest: Consumer, asked: set[str]) -> None:
    while True:
        kind, payload = helper.recv(doing="while sending the files asked for")
        if kind == protocol.START:
            entry = protocol.parse_entry(jsonfast.loads(payload, errors="surrogateescape"))
            if entry.path not in asked or entry.compact:
                raise protocol.Refused(f"a file it was not asked for: {entry.path[:200]!r}")
            asked.discard(entry.path)
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
    """One file's or image's content, until its END. An image's is bounded by its size
    (a file's is not: a file that grows while it is read is read to its end); only an
    image's may hold ZEROS runs (9 bytes for 16 MiB: unbounded, they would let a host
    keep the server cutting zeros forever)."""
    limit = sink.limit
    image = limit is not None
    received = 0
    while True:
        kind, payload = helper.recv(doing="in the middle of a file")
        if kind == protocol.DATA:
            data = protocol.unpack_data(payload, zeros=image)
            received += len(data)
            if limit is not None and received > limit:
                raise protocol.Refused(f"more than the {limit} bytes of the image {sink.path!r}")
            sink.write(data)
        elif kind == protocol.BLOCK:
            (offset,) = protocol.BLOCK_OFFSET.unpack(payload[:8])
            data = protocol.unpack_data(payload[8:], zeros=image)
            if limit is not None and offset + len(data) > limit:
                raise protocol.Refused(f"a block past the end of the image {sink.path!r}")
            sink.block(offset, data)
        elif kind == protocol.END:
            end = protocol.check_end(json.loads(payload))
            facts = end.get(protocol.CHANGED_WHILE_READ)
            if facts is not None:  # before finish, which stores it (or not)
                sink.ingest.changed_while_read(sink.path, facts)
            sink.finish(end)
            return
        else:
            raise BackupError(client=sink.ingest.client, reason=f"unexpected frame {kind!r}")


def after_hooks(helper: HelperProcess, hooks: list[dict[str, Any]], hooks_time: float) -> None:
    helper.send(protocol.AFTER)
    while True:
        kind, payload = helper.recv(extra=hooks_time, doing="during the after hooks")
        if kind == protocol.HOOK:
            with refusing(helper.remote.target.client):
                hooks.append(_hook(json.loads(payload)))
        elif kind == protocol.DONE:
            return
        else:
            raise BackupError(client="?", reason=f"unexpected frame {kind!r} after the hooks")
