"""The fallback for hosts without python3: the same pull over SFTP.

What SFTP (version 3, as OpenSSH serves it) cannot give, and what that costs:

- times in whole seconds, no ctime, no inode numbers: a file counts as unchanged when
  its size and mtime (to the second) match the parent's — the rule rsync uses by
  default;
- no whole-file digest on the host: changed files are sent whole (the SSH connection is
  opened with compression for this);
- no extended attributes, hard links are separate files; user and group names come
  from the listing's long form.

Hooks still run, as plain SSH commands (under ``sudo -n`` if asked). The walk
(:class:`costor.transport.sftp.SftpWalker`) produces the same entries as the helper
(:class:`costor.protocol.Entry`) for the same :class:`costor.store.backup.stream.Ingest`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from costor.errors import BackupError, HookFailed
from costor.protocol import ExcludeMatcher
from costor.store.backup.stream import Ingest
from costor.store.progress import Progress
from costor.transport.sftp import SftpWalker, run_hook

if TYPE_CHECKING:
    from costor.config.model import ClientConfig
    from costor.store.pool import Pool
    from costor.store.snapshot import Snapshot
    from costor.transport.ssh import Remote


def sftp_pull(
    client: ClientConfig,
    pool: Pool,
    parent: Snapshot | None,
    remote: Remote,
    index: Any,
    progress: Progress | None,
    *,
    reason: str,
    io_timeout: float = 600.0,
) -> tuple[Snapshot, list[dict[str, str]], list[dict[str, Any]]]:
    """The snapshot, the errors and warnings, and the hooks' results. A client with
    ``images`` fails here, before any hook runs: SFTP can neither read a block device
    nor compare an image's blocks on the host."""
    if client.images:
        raise BackupError(
            client=client.name,
            reason=f"its images ({', '.join(image.path for image in client.images)}) need "
            f"python3 on the host; the SFTP fallback cannot read them ({reason})",
        )
    hooks: list[dict[str, Any]] = []
    for command in client.hooks.before:
        result = _hook(remote, client, "before", command)
        hooks.append(result)
        if result["rc"] != 0:
            for after in client.hooks.after:
                hooks.append(_hook(remote, client, "after", after))
            raise HookFailed(
                client=client.name,
                phase="before",
                command=command,
                rc=result["rc"],
                stderr=result["stderr"].strip() or "(no stderr)",
            )
    try:
        sftp = remote.sftp(io_timeout)
        ingest = Ingest(
            pool,
            client=client.name,
            paths=list(client.paths),
            hostname=client.host or "",
            index=index,
            parent=parent,
            progress=progress,
        )
        walker = SftpWalker(
            remote,
            sftp,
            ingest,
            list(client.paths),
            ExcludeMatcher(list(client.exclude)),
            io_timeout=io_timeout,
        )
        try:
            walker.walk()
            missing = ingest.missing()  # "same" files whose blobs the pool lost
            for path in missing.whole + missing.delta:
                walker.send(path)
            snapshot = ingest.finish(bytes_transferred=walker.transferred)
        except BaseException:
            ingest.abort()
            raise
    finally:
        for command in client.hooks.after:
            hooks.append(_hook(remote, client, "after", command))
    errors = [{"path": "", "error": f"fell back to SFTP: {reason}"}, *ingest.errors]
    for hook in hooks:  # as with the helper (costor/ops/backup/pull.py): the snapshot is kept
        if hook["phase"] == "after" and hook["rc"] != 0:
            errors.append(
                {
                    "path": "",
                    "error": f"after hook `{hook['command']}` exited with {hook['rc']}: "
                    f"{(hook.get('stderr') or '').strip()}",
                }
            )
    return snapshot, errors, hooks


def _hook(remote: Remote, client: ClientConfig, phase: str, command: str) -> dict[str, Any]:
    sudo = bool(client.ssh and client.ssh.sudo)
    return run_hook(
        remote,
        phase,
        command,
        sudo=sudo,
        timeout=client.hooks.timeout_s,
        env=dict(client.hooks.env),
    )
