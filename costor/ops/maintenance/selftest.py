"""Self-test: restore a random sample of files from a client's latest snapshot into a
scratch directory and verify each one.

A restored file must have the snapshot's size, mode and modification time, and its
BLAKE3 digest must equal the digest of the snapshot's blobs read straight from the pool
(each blob authenticated by its keyed id on the way). For a local client whose source
file still has the snapshot's size and mtime, the restored file must also match the
source byte for byte. Any mismatch, or a file that cannot be restored, fails the test.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from typing import Any

import blake3

from costor.errors import CostorError
from costor.ops.audit import audited
from costor.ops.context import Context
from costor.store.gc.leases import reader_lease
from costor.store.restore.directory import Restorer


class SelfTestFailed(CostorError):
    """Self-test of {client} failed: {reason}"""


@dataclass
class SelfTestReport:
    client: str
    snapshot: str = ""
    files_checked: int = 0
    bytes_checked: int = 0
    compared_with_source: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "snapshot": self.snapshot,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "compared_with_source": self.compared_with_source,
            "failures": self.failures,
        }


def selftest(
    ctx: Context, client: str, *, files: int = 20, seed: int | None = None
) -> SelfTestReport:
    """Restore a sample of ``client``'s latest snapshot into a scratch directory and
    compare it; it reads backed-up content, so the audit log records it."""
    with audited(ctx, "selftest", f"client:{client}", detail={"files": files}) as noted:
        config = ctx.client_config(client)
        pool = ctx.open_pool(ctx.client_pool(client), load_index=False)
        lease = reader_lease(pool, "selftest")
        try:
            pool.load_index()
            report = _selftest(ctx, client, config, pool, files, seed)
        finally:
            if lease is not None:
                lease.release()
        noted["ok"] = report.ok
    return report


def _selftest(
    ctx: Context, client: str, config: Any, pool: Any, files: int, seed: int | None
) -> SelfTestReport:
    snapshots = pool.list_snapshots(ctx.client_names(client))
    if not snapshots:
        raise SelfTestFailed(client=client, reason="it has no snapshot yet")
    snapshot = snapshots[-1]
    report = SelfTestReport(client=client, snapshot=snapshot.id)
    regular = [
        (path, node)
        for path, node in pool.walk(bytes.fromhex(snapshot.tree))
        # Regular files only: an image is restored whole (gigabytes into the state
        # directory) and its source is a live device; `check --read-data` reads and
        # verifies every blob of it instead.
        if node.type == "file"
    ]
    sample = random.Random(seed).sample(regular, min(files, len(regular)))
    scratch = os.path.join(ctx.inventory.costor.state_dir, "selftest", uuid.uuid4().hex)
    try:
        for number, (path, node) in enumerate(sample):
            shown = "/" + os.fsdecode(path)
            target = os.path.join(scratch, str(number))
            try:
                Restorer(pool).restore(snapshot, target, shown)
                restored = os.path.join(os.fsencode(target), node.name)
                st = os.lstat(restored)
                expected = blake3.blake3()
                for blob in node.content:
                    expected.update(pool.read_blob(blob))
                digest = _file_digest(restored)
            except (CostorError, OSError) as error:
                report.failures.append({"path": shown, "reason": f"restore failed: {error}"})
                continue
            problem = _compare(node, st, digest, expected.hexdigest())
            if problem is None and config.transport == "local":
                problem = _compare_source(b"/" + path, node, digest, report)
            if problem is not None:
                report.failures.append({"path": shown, "reason": problem})
            report.files_checked += 1
            report.bytes_checked += node.size
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if report.failures:
        first = report.failures[0]
        raise SelfTestFailed(
            client=client,
            reason=f"{len(report.failures)} of {len(sample)} file(s) wrong, e.g. "
            f"{first['path']}: {first['reason']}",
            report=report.to_json(),
        )
    return report


_COMPARED_MODE = 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)


def _compare(node: Any, st: os.stat_result, digest: str, expected: str) -> str | None:
    if st.st_size != node.size:
        return f"size {st.st_size}, the snapshot says {node.size}"
    # The sample is restored as any restore to a directory other than / is: without
    # setuid/setgid bits (store/restore: a snapshot may come from a hostile host), so
    # those two bits are not compared.
    if st.st_mode & _COMPARED_MODE != node.mode & _COMPARED_MODE:
        return (
            f"mode {oct(st.st_mode & _COMPARED_MODE)}, the snapshot says "
            f"{oct(node.mode & _COMPARED_MODE)}"
        )
    if st.st_mtime_ns != node.mtime_ns:
        return "modification time differs from the snapshot"
    if digest != expected:
        return "content differs from the snapshot's data"
    return None


def _file_digest(path: bytes | str) -> str:
    digest = blake3.blake3()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return str(digest.hexdigest())


def _compare_source(path: bytes, node: Any, digest: str, report: SelfTestReport) -> str | None:
    try:
        st = os.lstat(path)
        if st.st_size != node.size or st.st_mtime_ns != node.mtime_ns:
            return None  # changed since the snapshot: nothing to compare with
        source = _file_digest(path)
    except OSError:
        return None  # gone or unreadable now: not the backup's fault
    report.compared_with_source += 1
    return None if source == digest else "differs from the unchanged source file"
