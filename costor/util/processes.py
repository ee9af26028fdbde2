"""Telling whether a process that left a mark (a state lock, a job, a pool lease) still
runs: only this host can tell, so a mark names its host (:func:`host_id`) and the
process's start (:func:`process_started`), and a PID that now belongs to a process
started at another time is a reused PID: the holder is gone."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host_id() -> str:
    """This host as a holder: hostname, boot id and PID namespace. Two containers with
    one hostname, or the same host after a reboot, are different holders."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return "|".join(parts)


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; /proc/PID/stat field 22),
    or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def holder_gone(holder_host: str | None, pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` of ``holder_host`` (a :func:`host_id`), started at
    ``started`` (ticks), is provably gone: it ran on this host and no such process runs
    now, or its PID belongs to a process started at another time. A holder on another
    host, or one that recorded no host, is never taken for gone."""
    if holder_host is None or holder_host != host_id():
        return False
    now = process_started(pid)
    return now is None or (started is not None and now != started)
