"""Agentless pull over SSH: one backup of a host, through the helper or SFTP.

The sequence (``docs/ssh.md`` has the user's view):

1. connect, requiring the pinned host key (:mod:`costor.ops.backup.host`);
2. start the helper (``costor/transport/helper.py``) from memory; a host without python3
   falls back to SFTP (:mod:`costor.ops.backup.sftp_pull`);
3. the helper runs the ``before`` hooks: one failing ends the backup here (after the
   ``after`` hooks ran), with no snapshot and the hook's stderr in the error;
4. the parent snapshot's file stat data and a Bloom filter of the pool's whole-file
   digests go to the helper, which then walks and streams entries and only the content
   the pool cannot already have (:class:`costor.store.backup.stream.Ingest` stores it);
5. files whose digest turned out not to be in the pool (Bloom false positives, blobs
   since pruned) are fetched;
6. the ``after`` hooks run (the helper runs them itself if the connection breaks);
7. the snapshot is saved, the new digests recorded.

Bytes over the connection are counted on the helper's channel (frame headers included;
SSH's own framing and encryption add a few percent on top). What goes over it is
:mod:`costor.protocol`; the frames of the hooks, the walk and the fetches are read and
written by :mod:`costor.transport.helper_session`.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costor import protocol
from costor.errors import BackupError, HostProtocolError, HostTimedOut, RemoteError
from costor.ops.backup.digest_index import StateDigestIndex
from costor.ops.backup.host import target, trusted_host_key
from costor.ops.backup.sftp_pull import sftp_pull
from costor.ops.context import Context
from costor.store.backup.parent import parent_image
from costor.store.backup.stream import Ingest
from costor.store.progress import Progress
from costor.transport.helper_session import (
    ParentSent,
    after_hooks,
    before_hooks,
    fetch_missing,
    read_walk,
    refusing,
)
from costor.transport.ssh import IO_TIMEOUT, Remote

if TYPE_CHECKING:
    from costor.config.model import ClientConfig
    from costor.store.backup.stream import Ingest
    from costor.store.pool import Pool
    from costor.store.snapshot import Snapshot
    from costor.transport.ssh import HelperProcess, Remote

PARENT_BATCH = 5000  # parent files per PARENT frame


@dataclass
class PullOutcome:
    snapshot: Snapshot
    errors: list[dict[str, str]] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    method: str = "helper"  # or "sftp"


class Connection:
    """Connecting and starting the helper, on a thread of its own: it overlaps with
    opening the pool (a key derivation) and reading the state, which it does not need.
    The SSH transport's :class:`costor.ops.backup.run.Source`."""

    def __init__(self, ctx: Context, client: ClientConfig) -> None:
        self.host_key = trusted_host_key(ctx, client)
        self.remote = Remote(target(ctx, client))
        self.io_timeout = float(client.ssh.io_timeout_s if client.ssh else IO_TIMEOUT)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="connect")
        self._started = self._executor.submit(self._start)

    def _start(self) -> HelperProcess:
        self.remote.connect(self.host_key)
        return self.remote.start_helper(self.io_timeout)

    def helper(self) -> HelperProcess:
        return self._started.result()

    def pull(
        self,
        ctx: Context,
        client: ClientConfig,
        pool: Pool,
        parent: Snapshot | None,
        *,
        progress: Progress | None,
    ) -> PullOutcome:
        """The backup, through the helper or SFTP (:func:`pull`); closes this."""
        return pull(ctx, client, pool, parent, progress=progress, connection=self)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._started.done() and self._started.exception() is None:
            self._started.result().stop_reading()  # a failed backup left frames unread
        self.remote.close()


def pull(
    ctx: Context,
    client: ClientConfig,
    pool: Pool,
    parent: Snapshot | None,
    *,
    progress: Progress | None = None,
    connection: Connection | None = None,
) -> PullOutcome:
    index = StateDigestIndex(ctx, pool.uuid)
    connection = connection or Connection(ctx, client)
    remote, host_key = connection.remote, connection.host_key
    try:
        helper = connection.helper()
        try:
            outcome = _with_helper(ctx, client, pool, parent, remote, helper, index, progress)
        except _NoPython as missing:
            helper.close()
            remote.connect(host_key, compress=True)  # SFTP sends files as they are
            snapshot, errors, hooks = sftp_pull(
                client,
                pool,
                parent,
                remote,
                index,
                progress,
                reason=str(missing),
                io_timeout=connection.io_timeout,
            )
            outcome = PullOutcome(snapshot, errors, hooks, "sftp")
        else:
            helper.close()
    finally:
        connection.close()
    index.save()
    return outcome


class _NoPython(Exception):
    pass


def _hello(
    client: ClientConfig, pool: Pool, io_timeout: float, images: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "paths": list(client.paths),
        "images": images,
        "exclude": list(client.exclude),
        "one_file_system": client.one_file_system,
        "digest_key": pool.transfer_key().hex(),
        "compress_level": 1,
        "hooks_before": list(client.hooks.before),
        "hooks_after": list(client.hooks.after),
        "hook_timeout": client.hooks.timeout_s,
        "hooks_env": dict(client.hooks.env),
        # During long work (hashing a huge file) the helper says it is alive this often,
        # so that the server's io timeout stays the time a host may be stuck.
        "heartbeat_s": protocol.heartbeat_interval(io_timeout),
    }


def _with_helper(
    ctx: Context,
    client: ClientConfig,
    pool: Pool,
    parent: Snapshot | None,
    remote: Remote,
    helper: HelperProcess,
    index: Any,
    progress: Progress | None,
) -> PullOutcome:
    ingest = Ingest(
        pool,
        client=client.name,
        paths=list(client.paths),
        hostname=client.host or client.name,  # replaced by the name in its reply
        index=index,
        parent=parent,
        progress=progress,
        images={image.path: protocol.IMAGE_BLOCK_SIZE for image in client.images},
    )
    try:
        return _run_helper(ctx, client, pool, remote, helper, index, ingest)
    except BaseException:
        ingest.abort()
        raise


def _run_helper(
    ctx: Context,
    client: ClientConfig,
    pool: Pool,
    remote: Remote,
    helper: HelperProcess,
    index: Any,
    ingest: Ingest,
) -> PullOutcome:
    cache = _cache_dir(ctx, pool, client)
    first, parent = _start(client, pool, remote, helper, index, ingest, cache)
    hooks = before_hooks(
        client.name, remote, helper, _hooks_time(client, "before"), _hooks_time(client, "after")
    )
    for frame_kind, frame in first:
        helper.send(frame_kind, frame)
    helper.send(protocol.WALK)
    try:
        read_walk(helper, ingest, parent)
    except BackupError:
        if ingest.parent_unreadable:
            _drop_cache(cache)
        raise
    fetch_missing(helper, ingest)
    after_hooks(helper, hooks, _hooks_time(client, "after"))
    helper.send(protocol.QUIT)
    snapshot = ingest.finish(bytes_transferred=helper.bytes_sent + helper.bytes_received)
    _write_cache(cache, ingest, snapshot.id, pool)
    return PullOutcome(snapshot, [*ingest.errors, *_after_hook_errors(hooks)], hooks, "helper")


def _start(
    client: ClientConfig,
    pool: Pool,
    remote: Remote,
    helper: HelperProcess,
    index: Any,
    ingest: Ingest,
    cache: Path,
) -> tuple[list[tuple[bytes, bytes]], ParentSent]:
    """HELLO and its reply; meanwhile the frames that go before the walk are made.
    A helper that does not start is told apart: no python3 (:class:`_NoPython`), sudo
    refusing, anything else."""
    try:
        images, image_blocks = _images(client, pool, ingest, index, cache)
        hello = _hello(client, pool, helper.io_timeout, images)
        helper.send(protocol.HELLO, json.dumps(hello).encode())
        # While the host starts Python and runs the before-hooks (~0.1 s and more), the
        # first frames of the walk are made ready here: they cost about as much.
        frames, parent = _parent_frames(ingest, cache, pool)
        first = [*frames, *image_blocks, (protocol.BLOOM, index.bloom())]
        # The reply comes with the before hooks' results: the hooks' time is theirs.
        kind, payload = helper.recv(extra=_hooks_time(client, "before"))
        helper.start_reading()
    except (HostProtocolError, HostTimedOut):
        raise
    except RemoteError as error:
        failure = _not_started(client, remote, helper)
        if isinstance(failure, _NoPython):
            raise failure from error
        raise failure from None
    if kind != protocol.HELLO_REPLY:
        raise RemoteError(host=remote.target.display, reason=f"unexpected reply {kind!r}")
    with refusing(client.name):
        reply = json.loads(payload)
        hostname = reply.get("hostname") if isinstance(reply, dict) else None
    ingest.hostname = str(hostname or client.host)[:255]
    return first, parent


def _images(
    client: ClientConfig, pool: Pool, ingest: Ingest, index: Any, cache: Path
) -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    """HELLO's ``images`` (each with what the parent snapshot holds of it: size, block
    size, ``source_id``) and the PARENT_LARGE frames of the parent's block hashes of
    each, which the helper compares with (after the large files' frames: they win)."""
    specs: list[dict[str, Any]] = []
    large: list[list[str]] = []
    parent = ingest.parent
    cached = _read_cache(cache, parent.id) if parent is not None and client.images else None
    kept: dict[str, str] = {p: b for p, b in cached.large} if cached is not None else {}
    block = protocol.IMAGE_BLOCK_SIZE
    for image in client.images:
        spec: dict[str, Any] = {
            "path": image.path,
            "changes": image.changes,
            "previous": image.previous,
            "block_size": block,
            "parent": None,
        }
        node = parent_image(pool, bytes.fromhex(parent.tree), image.path) if parent else None
        facts = (node.image or {}) if node is not None else {}
        whole = node is not None and all(blob in pool.index for blob in node.content)
        if node is not None and facts.get("source") == "file" and whole:
            # An image file whose size, times and inode are these is unchanged (the
            # rule for files); a device's times say nothing: it is always compared.
            # Only while the parent's copy is whole in the pool: else the host sends
            # the image again (a damaged or pruned copy heals, as a file's does).
            spec["stat"] = [node.size, node.mtime_ns, node.ctime_ns, node.inode]
        # The parent's block size: the least one, or a larger one the helper chose for
        # an image of more than protocol.MAX_IMAGE_BLOCKS blocks (it chooses the same again for
        # the same size; a size that crosses the line is compared from scratch).
        used = facts.get("block_size")
        if node is not None and isinstance(used, int) and used >= block and not used & (used - 1):
            blocks = base64.b64decode(kept[image.path]) if image.path in kept else None
            if blocks is None or len(blocks) != 16 * -(-node.size // used):
                blocks = index.blocks(node.content)
            if blocks is not None and len(blocks) == 16 * -(-node.size // used):
                spec["parent"] = {
                    "size": node.size,
                    "block_size": used,
                    "source_id": facts.get("source_id"),
                }
                large.append([image.path, base64.b64encode(blocks).decode()])
        specs.append(spec)
    frames = [(protocol.PARENT_LARGE, zlib.compress(json.dumps([item]).encode())) for item in large]
    return specs, frames


def _hooks_time(client: ClientConfig, phase: str) -> float:
    """How long the helper may rightly say nothing while it runs the hooks of ``phase``
    (it sends their results when all have run): each may take ``hooks.timeout_s``."""
    hooks = client.hooks.before if phase == "before" else client.hooks.after
    return float(len(hooks) * (client.hooks.timeout_s + 5))


def _not_started(client: ClientConfig, remote: Remote, helper: HelperProcess) -> Exception:
    status, stderr = helper.close()
    if status == 127 or "not found" in stderr or "No such file" in stderr:
        return _NoPython(stderr.strip() or "python3 not found")
    error: Exception
    if client.ssh is not None and client.ssh.sudo and "sudo" in stderr:
        error = RemoteError(
            host=remote.target.display,
            reason=f"sudo -n refused to run the helper: {stderr.strip()} (see the "
            "sudoers line in docs/ssh.md)",
        )
    else:
        detail = f": {stderr.strip()}" if stderr.strip() else ""
        error = RemoteError(
            host=remote.target.display, reason=f"the helper did not start (exit {status}){detail}"
        )
    return error


def _after_hook_errors(hooks: list[dict[str, Any]]) -> list[dict[str, str]]:
    """An after hook that failed is reported; the snapshot is kept."""
    return [
        {
            "path": "",
            "error": f"after hook `{hook['command']}` exited with {hook['rc']}: "
            f"{(hook.get('stderr') or '').strip()}",
        }
        for hook in hooks
        if hook["phase"] == "after" and hook["rc"] != 0
    ]


def _parent_frames(
    ingest: Ingest, cache: Path | None, pool: Pool
) -> tuple[list[tuple[bytes, bytes]], ParentSent]:
    """The parent's files and directories as fingerprints (the helper recognises what
    did not change without its paths being sent: 12 bytes an entry), block hashes of its
    large files, and the hashes of its directories' names (for a sparse walk). From the
    cache the previous pull left, or by walking the parent's trees (then no sparse
    walk: the next pull has the cache)."""
    if ingest.parent is None:
        return [], ParentSent()
    # Blobs recorded as damaged and held nowhere else: the parent's files that need them
    # must be sent again (parent_files leaves them out), which the cache cannot say.
    lost = any(blob not in pool.index for blob, _pack in pool.damage)
    cached = None if lost else _read_cache(cache, ingest.parent.id)
    dir_hashes = b""
    if cached is not None:
        fingerprints, large = cached.fingerprints, cached.large
        # A directory left out of the walk keeps the parent's entries unread: only while
        # every blob the parent had is still indexed (no segment it knew has gone, no
        # pack is condemned) is that as safe as a full walk's check of each file.
        if cached.segments <= pool.segments and not pool.condemned:
            dir_hashes = cached.dir_hashes
    else:
        built, large = bytearray(), []
        for item in ingest.parent_files():
            raw = item.path.encode("utf-8", "surrogateescape")
            built += protocol.fingerprint(
                ingest.key, raw, item.size, item.mtime_ns, item.ctime_ns, item.inode
            )
            if item.blocks:
                large.append([item.path, base64.b64encode(item.blocks).decode()])
        fingerprints = bytes(built)
    frames = [
        (protocol.PARENT, fingerprints[start : start + protocol.FINGERPRINT_SIZE * PARENT_BATCH])
        for start in range(0, len(fingerprints), protocol.FINGERPRINT_SIZE * PARENT_BATCH)
    ]
    frames += [
        (protocol.PARENT_DIRS, dir_hashes[start : start + protocol.DIR_HASH_SIZE * PARENT_BATCH])
        for start in range(0, len(dir_hashes), protocol.DIR_HASH_SIZE * PARENT_BATCH)
    ]
    if ingest.images:  # an image's hashes go with its HELLO entry (:func:`_images`)
        large = [item for item in large if item[0] not in ingest.images]
    frames += [
        (protocol.PARENT_LARGE, zlib.compress(json.dumps(large[start : start + 100]).encode()))
        for start in range(0, len(large), 100)
    ]
    return frames, ParentSent(fingerprints, dir_hashes)


def _cache_dir(ctx: Context, pool: Pool, client: ClientConfig) -> Path:
    return Path(ctx.inventory.costor.state_dir) / "cache" / pool.uuid / client.name


@dataclass(frozen=True)
class _Cached:
    fingerprints: bytes
    large: list[list[str]]
    dir_hashes: bytes
    segments: set[str]  # the index segments when it was written


def _read_cache(cache: Path | None, snapshot_id: str) -> _Cached | None:
    """What a pull saved for ``snapshot_id`` (a cache: any doubt, None)."""
    if cache is None:
        return None
    try:
        fingerprints = (cache / f"{snapshot_id}.fp").read_bytes()
        large = json.loads((cache / f"{snapshot_id}.large.json").read_text())
    except (OSError, ValueError):
        return None
    if len(fingerprints) % protocol.FINGERPRINT_SIZE:
        return None
    try:
        dir_hashes = (cache / f"{snapshot_id}.dirs").read_bytes()
        segments = set(json.loads((cache / f"{snapshot_id}.segments.json").read_text()))
    except (OSError, ValueError, TypeError):
        dir_hashes, segments = b"", set()
    if len(dir_hashes) % protocol.DIR_HASH_SIZE:
        dir_hashes = b""
    return _Cached(fingerprints, large, dir_hashes, segments)


def _write_cache(cache: Path, ingest: Ingest, snapshot_id: str, pool: Pool) -> None:
    """Keep this snapshot's fingerprints and directory hashes for the next pull; older
    ones go. Large files' block hashes come from this pull or, for unchanged ones, the
    parent's cache."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        large = {p: base64.b64encode(b).decode() for p, b in ingest.large_blocks.items()}
        if ingest.parent is not None:
            previous = _read_cache(cache, ingest.parent.id)
            for path, blocks in previous.large if previous else []:
                large.setdefault(path, blocks)
        for old in cache.iterdir():
            old.unlink()
        for name, data in (
            (f"{snapshot_id}.large.json", json.dumps(sorted(large.items())).encode()),
            (f"{snapshot_id}.segments.json", json.dumps(sorted(pool.segments)).encode()),
            (f"{snapshot_id}.dirs", bytes(ingest.dir_hashes)),
            (f"{snapshot_id}.fp", bytes(ingest.fingerprints)),
        ):
            temporary = cache / f".{name}.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, cache / name)
    except OSError:
        pass  # a cache: the next pull walks the tree instead


def _drop_cache(cache: Path) -> None:
    """After a sparse walk met a parent tree it could not read: the next pull walks
    every directory whole."""
    try:
        for old in cache.iterdir():
            old.unlink()
    except OSError:
        pass
