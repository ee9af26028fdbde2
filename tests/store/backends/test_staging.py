"""The staging cache over real backends: asynchronous pack uploads, the barrier before
index segments and snapshots, and staged packs surviving a failed or killed run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.faults import FaultyBackend
from support.fixtures import PASSPHRASE, Site, tree_digest
from support.inventory import write_local_inventory
from support.s3servers import moto_server  # noqa: F401  (fixture)

from costor.errors import BackendTransient
from costor.store.backends import Backend, LocalBackend
from costor.store.backends.staging import StagingBackend
from costor.store.backup.walk import Archiver
from costor.store.checker import check
from costor.store.pool import Pool
from costor.store.restore.directory import Restorer


class Gate:
    """Wraps a real backend; pack PUTs wait until the gate opens (a slow store)."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.location = inner, inner.location
        self.opened = threading.Event()

    def put(self, name: str, data: bytes) -> None:
        if name.startswith("packs/"):
            self.opened.wait(10)
        self.inner.put(name, data)

    def __getattr__(self, attribute: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, attribute)


def test_pack_put_returns_before_the_upload_and_reads_see_it(tmp_path: Path) -> None:
    store = LocalBackend(tmp_path / "store")
    gate = Gate(store)
    staging = StagingBackend(gate, tmp_path / "staging")  # type: ignore[arg-type]
    staging.put("packs/aa/bb/aabb", b"pack bytes")
    assert not store.exists("packs/aa/bb/aabb")  # still uploading
    assert staging.get("packs/aa/bb/aabb") == b"pack bytes"
    assert staging.get_range("packs/aa/bb/aabb", 5, 5) == b"bytes"
    assert [i.name for i in staging.list("packs/")] == ["packs/aa/bb/aabb"]
    # An index segment is a barrier: it waits for the pack's upload.
    writer = threading.Thread(target=staging.put, args=("index/ff", b"segment"))
    writer.start()
    time.sleep(0.2)
    assert not store.exists("index/ff")
    gate.opened.set()
    writer.join(10)
    assert store.get("packs/aa/bb/aabb") == b"pack bytes" and store.exists("index/ff")
    assert not list((tmp_path / "staging").rglob("aabb"))  # removed once uploaded
    staging.close()


def test_failed_upload_fails_the_barrier_and_resumes_next_time(tmp_path: Path) -> None:
    store = LocalBackend(tmp_path / "store")
    broken = FaultyBackend(store, reset_puts=lambda name: True)
    staging = StagingBackend(broken, tmp_path / "staging")
    staging.put("packs/aa/bb/aabb", b"kept locally")
    with pytest.raises(BackendTransient):
        staging.put("snapshots/cc", b"must not land before its packs")
    assert not store.exists("snapshots/cc") and not store.exists("packs/aa/bb/aabb")
    staging._executor.shutdown(wait=True)  # this process "ends" without a successful drain
    # The next process finds the staged pack and uploads it.
    again = StagingBackend(store, tmp_path / "staging")
    assert again.resumed == 1
    again.drain()
    assert store.get("packs/aa/bb/aabb") == b"kept locally"
    again.close()


@pytest.mark.parametrize("kind", ["local", "moto"])
def test_pool_through_staging_backs_up_restores_and_checks(
    kind: str, request: pytest.FixtureRequest, source: Path, tmp_path: Path
) -> None:
    if kind == "moto":
        from support.s3servers import make_s3_backend

        server = request.getfixturevalue("moto_server")
        bucket = server.new_bucket()

        def store() -> Backend:
            return make_s3_backend(server, bucket, "p")  # type: ignore[no-any-return]
    else:

        def store() -> Backend:
            return LocalBackend(tmp_path / "store")

    (source / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    staging = StagingBackend(store(), tmp_path / "staging")
    pool = Pool.init(staging, passphrase=PASSPHRASE, pack_size=4 * 1024 * 1024)
    snapshot = Archiver(pool, client="c", paths=[str(source)]).run()
    staging.close()
    assert staging.uploaded >= 3
    plain = Pool.open(store(), PASSPHRASE)
    assert check(plain, read_data=True).ok
    plain.load_index()
    Restorer(plain).restore(snapshot, str(tmp_path / "restored"))
    assert tree_digest(tmp_path / "restored" / str(source).lstrip("/")) == tree_digest(source)


def test_kill_9_with_staging_then_the_next_backup_completes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"f{i}").write_bytes(os.urandom(8 * 1024 * 1024))
    inventory = write_local_inventory(tmp_path, {"alpha": [data]}, extra_pool="staging = true")
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    staging_dir = tmp_path / ".costor" / "staging" / "main"
    proc = site.process("backup", "alpha")
    deadline = time.monotonic() + 60
    while proc.poll() is None and not list(staging_dir.glob("packs/*/*/*")):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert site.cli("check").code == 0
    final = site.cli("backup", "alpha", "--json")
    assert final.code == 0, final.stderr
    assert not list(staging_dir.glob("packs/*/*/*"))  # everything uploaded
    assert site.cli("check", "--read-data").code == 0
    target = tmp_path / "restored"
    assert site.cli("restore", "alpha:latest", "--target", str(target)).code == 0
    assert tree_digest(target / str(data).lstrip("/")) == tree_digest(data)
