"""``costor restore``: a snapshot (or a path in it) into a directory or an archive.

Resolves the snapshot (``CLIENT:latest`` across every pool, a client the inventory does
not declare too), takes a reader lease before loading the index (a prune meanwhile
waits for it), and hands over to ``store/restore/directory.py`` (a directory: overwrite modes,
include/exclude, dry run) or ``store/restore/archive.py`` (tar, tar.zst, zip; an existing file
replaced only when forced) or ``store/restore/device.py`` (one image onto a block device,
after checking it is not mounted, in use or too small). ``docs/restore.md`` is the
user's guide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from costor.errors import ArchiveExists, BackendError, UsageError
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.ops.restore.snapshots import resolve
from costor.store.gc.leases import reader_lease
from costor.store.pool import Pool
from costor.store.restore.archive import plan_archive, resolve_format, write_archive
from costor.store.restore.device import image_node, restore_to_device
from costor.store.restore.directory import DEFAULT_OVERWRITE, OVERWRITE_MODES, Restorer, Selection

if TYPE_CHECKING:
    from costor.store.progress import Progress


@dataclass
class RestoreOutcome:
    """One restore (or dry run). ``files_*`` count every entry that is not a directory;
    ``files_written`` = new + overwritten, ``files_skipped`` = unchanged + not
    overwritten (see ``store/restore/directory.py``). An archive counts its entries as new."""

    snapshot_id: str
    client: str
    pool: str
    path: str
    target: str | None = None
    archive: str | None = None
    device: str | None = None  # --target-device: the block device an image was written to
    device_size: int | None = None
    format: str | None = None
    overwrite: str | None = None
    faithful: bool | None = None  # directories: setuid bits, devices, system xattrs kept
    dry_run: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    files_new: int = 0
    files_overwritten: int = 0
    files_unchanged: int = 0
    files_not_overwritten: int = 0
    dirs: int = 0
    bytes_written: int = 0
    not_restorable: int = 0  # sockets; device nodes without root; what a format cannot hold
    archive_bytes: int | None = None
    entries: list[dict[str, Any]] | None = None
    # zip: entries whose name held a backslash, archived under another (archive.py)
    renamed: list[dict[str, str]] = field(default_factory=list)

    @property
    def files_written(self) -> int:
        return self.files_new + self.files_overwritten

    @property
    def files_skipped(self) -> int:
        return self.files_unchanged + self.files_not_overwritten

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "snapshot_id": self.snapshot_id,
            "client": self.client,
            "pool": self.pool,
            "path": self.path,
        }
        if self.archive is not None:
            document.update(archive=self.archive, format=self.format)
        elif self.device is not None:
            document.update(device=self.device, device_size=self.device_size)
        else:
            document.update(
                target=self.target, overwrite=self.overwrite, faithful=bool(self.faithful)
            )
        document.update(
            dry_run=self.dry_run,
            include=list(self.include),
            exclude=list(self.exclude),
            files=self.files_written + self.files_skipped,
            files_written=self.files_written,
            files_new=self.files_new,
            files_overwritten=self.files_overwritten,
            files_skipped=self.files_skipped,
            files_unchanged=self.files_unchanged,
            files_not_overwritten=self.files_not_overwritten,
            dirs=self.dirs,
            bytes_written=self.bytes_written,
            not_restorable=self.not_restorable,
        )
        if self.archive is not None and not self.dry_run:
            document["archive_bytes"] = self.archive_bytes
        if self.renamed:
            document["renamed"] = self.renamed
        if self.entries is not None:
            document["entries"] = self.entries
        return document


def restore(
    ctx: Context,
    ref: str,
    *,
    path: str = "/",
    target: str | None = None,
    archive: str | BinaryIO | None = None,
    device: str | None = None,
    archive_name: str | None = None,
    format: str | None = None,
    force: bool = False,
    overwrite: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    list_entries: bool = False,
    faithful: bool | None = None,
    progress: Progress | None = None,
) -> RestoreOutcome:
    """Restore ``path`` of snapshot ``ref`` into the directory ``target``, or as an
    archive to ``archive`` (a file name, or an open stream then shown as
    ``archive_name``). ``overwrite`` (directories only; default ``always``, as restic):
    see ``store/restore/directory.py``; ``force`` (archives only): replace an existing file.
    ``list_entries``: the outcome lists each entry and what was (or would be) done.
    ``faithful`` (directories only): recreate setuid/setgid bits, device nodes, fifos
    and ``security.*``/``trusted.*`` xattrs as the snapshot holds them; None (the
    default) does so only when the target is ``/`` (docs/restore.md, "Restoring
    untrusted snapshots"). Whatever it says, an entry whose name could leave the target
    is refused (:class:`~costor.errors.RestoreRefused`). ``device``: write the image
    ``path`` names onto this block device (``store/restore/device.py``)."""
    if [target, archive, device].count(None) != 2:
        raise UsageError(
            message="restore needs exactly one of a target directory, an archive or a device"
        )
    if device is not None and (
        overwrite is not None or force or format is not None or faithful or include or exclude
    ):
        raise UsageError(
            message="--target-device writes one image: --overwrite, --force, --format, "
            "--faithful, --include and --exclude do not apply"
        )
    if archive is not None and overwrite is not None:
        raise UsageError(
            message="--overwrite applies to a restore into a directory; "
            "an archive replaces an existing file only with --force"
        )
    if target is not None and (force or format is not None):
        raise UsageError(message="--force and --format apply to --archive only")
    if archive is not None and faithful:
        raise UsageError(
            message="--faithful applies to a restore into a directory (--target); "
            "an archive keeps every entry and mode as the snapshot holds them"
        )
    if overwrite is not None and overwrite not in OVERWRITE_MODES:
        raise UsageError(
            message=f"unknown overwrite mode {overwrite!r}; "
            f"choose one of {', '.join(OVERWRITE_MODES)}"
        )
    selection = Selection(include, exclude)  # bad patterns fail before the pool opens
    if isinstance(archive, str) and archive != "-" and not force and os.path.lexists(archive):
        raise ArchiveExists(path=archive)
    if archive is not None:
        format = resolve_format(archive, format)  # a bad name fails before the pool opens
    pool_name, pool, snapshot = resolve(ctx, ref, load_index=False)
    # The content is read from here on: recorded first, and not read if the record
    # cannot be written (costor/ops/audit.py). A dry run reads trees only.
    with audited(
        ctx,
        "restore",
        f"client:{snapshot.client}",
        detail={
            "snapshot": snapshot.id,
            "pool": pool_name,
            "path": path,
            "target": target,
            "archive": None
            if archive is None
            else archive_name or (archive if isinstance(archive, str) else "-"),
            "include": list(include),
            "exclude": list(exclude),
            **({"device": device} if device is not None else {}),
        },
        before=True,
        dry_run=dry_run,
    ) as noted:
        outcome = RestoreOutcome(
            snapshot_id=snapshot.id,
            client=snapshot.client,
            pool=pool_name,
            path=path,
            target=target,
            format=format,
            dry_run=dry_run,
            include=list(include),
            exclude=list(exclude),
        )
        lease = reader_lease(pool)  # before the index: see costor/store/gc/leases.py
        try:
            ctx.load_index(pool)
            if device is not None:
                node = image_node(pool, snapshot, path)
                written = restore_to_device(pool, node, device, progress=progress, dry_run=dry_run)
                outcome.device = device
                outcome.device_size = written.device_size
                outcome.files_new = 1
                outcome.bytes_written = written.bytes_written
                if list_entries:
                    outcome.entries = [
                        {"path": path, "type": node.type, "size": node.size, "action": "new"}
                    ]
            elif target is not None:
                outcome.overwrite = overwrite or DEFAULT_OVERWRITE
                restorer = Restorer(
                    pool,
                    progress=progress,
                    overwrite=outcome.overwrite,
                    selection=selection,
                    dry_run=dry_run,
                    list_entries=list_entries,
                    faithful=faithful,
                )
                result = restorer.restore(snapshot, target, path)
                outcome.faithful = restorer.policy.faithful
                outcome.files_new = result.files_new
                outcome.files_overwritten = result.files_overwritten
                outcome.files_unchanged = result.files_unchanged
                outcome.files_not_overwritten = result.files_not_overwritten
                outcome.dirs = result.dirs
                outcome.bytes_written = result.bytes_written
                outcome.not_restorable = result.skipped
                outcome.entries = result.entries
            else:
                assert archive is not None
                outcome.archive = archive_name or (archive if isinstance(archive, str) else "-")
                if dry_run:
                    archived = plan_archive(
                        pool,
                        snapshot,
                        path,
                        archive,
                        format=format,
                        selection=selection,
                        list_entries=list_entries,
                    )
                else:
                    archived = write_archive(
                        pool,
                        snapshot,
                        path,
                        archive,
                        format=format,
                        progress=progress,
                        force=force,
                        selection=selection,
                    )
                outcome.files_new = archived.files
                outcome.dirs = archived.dirs
                outcome.bytes_written = archived.bytes_written
                outcome.not_restorable = archived.skipped
                outcome.archive_bytes = archived.archive_bytes
                outcome.renamed = list(archived.renamed)
                outcome.entries = archived.entries
        finally:
            record_damage(pool)
            if lease is not None:
                lease.release()
        noted.update(files=outcome.files_written, bytes=outcome.bytes_written)
    return outcome


def record_damage(pool: Pool) -> None:
    """Record the damaged blob copies the restore met (the next backup stores their
    content again: costor/store/damage.py). A pool it cannot write to keeps none."""
    try:
        pool.save_damage()
    except BackendError:
        pass
