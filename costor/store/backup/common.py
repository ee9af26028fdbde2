"""What the local walk (:mod:`.walk`) and the host stream (:mod:`.stream`) share."""

from __future__ import annotations

import os
import time
from typing import NamedTuple, Protocol


def node_only_warning(path: str, kind: str, target: str | None = None) -> dict[str, str]:
    """The warning for a path given to back up whose node is stored without contents:
    a block or character device (``kind`` "b" or "c"), or a symbolic link to one
    (``kind`` "l", ``target`` what it points to). An errors entry marked ``"severity":
    "warning"`` (:class:`costor.ops.backup.run.BackupOutcome` lists it apart); it does not
    count as a failed file."""
    if kind == "l":
        message = f"{path} is a symbolic link to the device {target}: the link was stored, "
        message += "not the device's contents"
    else:
        message = f"{path} is a {'block' if kind == 'b' else 'character'} device: its node "
        message += "was stored, not its contents"
    if kind in ("b", "l"):
        message += " (list it in the client's images to back up its contents)"
    return {"path": path, "error": message, "severity": "warning"}


class FileStatus(Protocol):
    """What :func:`changed_while_read` needs of a file's status once read: an
    ``os.stat_result`` (the local walk's ``fstat``), or the numbers a host sent."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime_ns(self) -> int: ...


class StatusAfter(NamedTuple):
    """A file's status after the read, as a host reported it (``fstat`` there)."""

    st_size: int
    st_mtime_ns: int


def changed_while_read(
    path: bytes | str, size: int, mtime_ns: int | None, read: int, after: FileStatus
) -> dict[str, str] | None:
    """The warning for a file that changed while it was read (its size before the read
    was ``size``, its modification time ``mtime_ns``; ``read`` bytes came, ``after`` is
    its status once read): the stored copy may mix old and new contents. It is stored
    (an errors entry marked ``"severity": "warning"``), and the next backup reads it
    again (its recorded time no longer matches). The helper on a host applies the same
    rule and sends these numbers (costor/protocol.py, "Changed while read")."""
    if read == size == after.st_size and mtime_ns in (None, after.st_mtime_ns):
        return None
    how = f"{size} bytes before, {read} read" if read != size else "modified meanwhile"
    message = f"changed while it was being read ({how}): the stored copy may be inconsistent"
    return {"path": os.fsdecode(path), "error": message, "severity": "warning"}


def rfc3339_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
