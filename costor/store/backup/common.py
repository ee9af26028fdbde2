"""What the local walk (:mod:`.walk`) and the host stream (:mod:`.stream`) share."""

from __future__ import annotations

import time


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
        message += " (image backups are not available yet)"
    return {"path": path, "error": message, "severity": "warning"}


def rfc3339_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
