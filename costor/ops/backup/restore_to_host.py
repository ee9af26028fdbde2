"""Restore onto a client's own machine: the snapshot's host or another client's (a
restore job, ``POST /api/v1/snapshots/{id}/restore``; docs/server.md).

It lives beside the pulls because it reaches hosts as they do (the client's address,
credentials, pinned host key and ``ssh.sudo``: :mod:`costor.ops.backup.host`). A client
of transport ``local`` is this machine: the restore writes the directory itself, as
``costor restore --target`` does. A client over SSH receives the engine's own tar
archive into ``tar -x`` in the target directory (:meth:`costor.transport.ssh.Remote.
extract_tar`): one restore path, whose names the archive writer already confines, and
GNU tar on the host refuses ``..`` and absolute names again. What that way cannot do:
the ``--overwrite`` modes (tar replaces files) and ``--faithful`` (tar as root restores
owners and modes; device nodes and setuid bits as the archive holds them).

The target must be an absolute directory on the receiving machine and is never ``/``:
a restore job writes next to what is there, never over a whole system (that is
``costor restore --target / --faithful`` on the machine itself).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from costor.errors import UnknownResource, UsageError
from costor.ops.backup.host import target as host_target
from costor.ops.backup.host import trusted_host_key
from costor.ops.context import Context
from costor.ops.progress import Progress
from costor.ops.restore.run import RestoreOutcome, restore
from costor.ops.restore.snapshots import resolve


def restore_to_host(
    ctx: Context,
    ref: str,
    *,
    client: str | None = None,
    target: str,
    path: str = "/",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> RestoreOutcome:
    """Restore ``path`` of snapshot ``ref`` into directory ``target`` on ``client``'s
    machine (default: the snapshot's own client), reporting to ``progress``. Raises :class:`UsageError` for a
    target that is not an absolute directory other than ``/``, UnknownResource for a
    client that is not declared, and what the connection or the host's tar raise."""
    target = checked_target(target)
    if client is None:
        _name, _pool, snapshot = resolve(ctx, ref, load_index=False)
        client = snapshot.client
    config = ctx.inventory.clients.get(client)
    if config is None:
        raise UnknownResource(kind="client", name=client)
    if config.transport == "local":
        return restore(
            ctx,
            ref,
            path=path,
            target=target,
            include=include,
            exclude=exclude,
            overwrite=None,
            progress=progress,
        )
    from costor.transport.ssh import IO_TIMEOUT, Remote  # SSH only when a host is reached

    io_timeout = float(config.ssh.io_timeout_s if config.ssh else IO_TIMEOUT)
    with Remote(host_target(ctx, config)) as remote:
        remote.connect(trusted_host_key(ctx, config))
        stream = remote.extract_tar(target, io_timeout)
        try:
            outcome = restore(
                ctx,
                ref,
                path=path,
                archive=stream,  # type: ignore[arg-type]  # a writable binary stream
                archive_name=f"{client}:{target}",
                format="tar",
                include=include,
                exclude=exclude,
                progress=progress,
            )
        except BaseException:
            stream.closed = True  # the connection closes with the Remote: tar ends
            raise
        stream.close()  # raises RemoteError when tar failed on the host
    outcome.target = f"{client}:{target}"
    outcome.archive = None
    return outcome


def checked_target(target: str) -> str:
    """``target`` normalised; UsageError unless it is an absolute directory but ``/``
    (checked when the job is queued, so a bad one is refused at once)."""
    if not target or "\x00" in target or not posixpath.isabs(target):
        raise UsageError(message=f"the target must be an absolute directory: {target!r}")
    normal = posixpath.normpath(target)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if normal == "/":
        raise UsageError(
            message="a restore job does not write over / (restore into a directory, or "
            "run `costor restore --target / --faithful` on the machine itself)"
        )
    return normal


__all__ = ["checked_target", "restore_to_host"]
