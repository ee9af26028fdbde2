"""kill -9 at any point leaves a pool that checks clean and that the next backup
continues into; two backups into one pool at the same time both succeed."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from support.fixtures import Site, tree_digest
from support.inventory import write_local_inventory

MiB = 1024 * 1024


def make_data(
    root: Path, *, seed: int, big_files: int = 6, big_size: int = 16 * MiB, small: int = 300
) -> int:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(big_files):
        data = rng.randbytes(big_size)
        (root / f"big{i}.bin").write_bytes(data)
        total += len(data)
    for i in range(small):
        d = root / f"d{i % 17}"
        d.mkdir(exist_ok=True)
        data = rng.randbytes(rng.randint(10, 20_000))
        (d / f"f{i}").write_bytes(data)
        total += len(data)
    return total


def _packs(pool: Path) -> int:
    return len(list(pool.glob("packs/*/*/*")))


@pytest.mark.slow
def test_kill_9_at_any_point(tmp_path: Path) -> None:
    data = tmp_path / "data"
    total = make_data(data, seed=1, big_files=8)
    site = Site(tmp_path, write_local_inventory(tmp_path, {"alpha": [data]}), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    rng = random.Random(5)
    killed_mid_write = 0
    # None: kill during start-up; a number: kill that long after the run's first new
    # pack appears, i.e. while packs are being written.
    for extra in (None, 0.0, 0.05, 0.15, 0.3):
        before = _packs(site.pool_path)
        proc = site.process("backup", "alpha")
        if extra is None:
            time.sleep(0.3)
        else:
            deadline = time.monotonic() + 60
            while proc.poll() is None and _packs(site.pool_path) == before:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(extra + rng.random() * 0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_write += extra is not None
        proc.communicate()
        check = site.cli("check")
        assert check.code == 0, check.stdout + check.stderr
    assert killed_mid_write >= 2, "backups finished before they could be killed"
    stored_before = sum(p.stat().st_size for p in site.pool_path.glob("packs/*/*/*"))
    final = site.cli("backup", "alpha", "--json")
    assert final.code == 0, final.stderr
    document = final.json()
    # The killed runs' packs were adopted: the last backup stored only the rest.
    assert stored_before > 4 * MiB
    assert document["bytes_added"] < total - stored_before // 2
    assert site.cli("check", "--read-data").code == 0
    target = tmp_path / "restored"
    assert site.cli("restore", "alpha:latest", "--target", str(target)).code == 0
    assert tree_digest(target / str(data).lstrip("/")) == tree_digest(data)


@pytest.mark.slow
def test_two_backups_into_one_pool_at_once(tmp_path: Path) -> None:
    shared = tmp_path / "alpha"
    make_data(shared, seed=2, big_files=3)
    beta = tmp_path / "beta"
    shutil.copytree(shared, beta / "copy")
    make_data(beta / "own", seed=3, big_files=2, small=50)
    site = Site(
        tmp_path,
        write_local_inventory(tmp_path, {"alpha": [shared], "beta": [beta]}),
        tmp_path / "pool",
    )
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0  # the pool already holds alpha's data
    make_data(shared / "more", seed=4, big_files=2, small=20)

    first = site.process("backup", "alpha", "--json")
    second = site.process("backup", "beta", "--json")
    out_a, err_a = first.communicate(timeout=300)
    out_b, err_b = second.communicate(timeout=300)
    assert first.returncode == 0, err_a.decode()
    assert second.returncode == 0, err_b.decode()
    import json

    beta_doc = json.loads(out_b)
    own_size = sum(p.stat().st_size for p in (beta / "own").rglob("*") if p.is_file())
    copy_size = sum(p.stat().st_size for p in (beta / "copy").rglob("*") if p.is_file())
    # beta's copy of alpha's files was deduplicated against the pool.
    assert beta_doc["bytes_added"] < own_size + copy_size // 10
    assert site.cli("check", "--read-data").code == 0
    snapshots = site.cli("snapshots", "--json").json()
    assert sorted(s["client"] for s in snapshots) == ["alpha", "alpha", "beta"]
    for client, path in (("alpha", shared), ("beta", beta)):
        target = tmp_path / f"restore-{client}"
        assert site.cli("restore", f"{client}:latest", "--target", str(target)).code == 0
        assert tree_digest(target / str(path).lstrip("/")) == tree_digest(path)


def test_killed_apply_can_be_run_again(tmp_path: Path, source: Path) -> None:
    """Killed while migrating the database, initialising the pool or registering the
    client: the next apply finishes the job."""
    for attempt, delay in enumerate((0.35, 0.5, 0.65, 0.8, 1.0)):
        root = tmp_path / f"attempt{attempt}"
        root.mkdir()
        site = Site(root, write_local_inventory(root, {"alpha": [source]}), root / "pool")
        proc = site.process("apply", "--auto-approve")
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        result = site.cli("apply", "--auto-approve")
        assert result.code == 0, result.stderr
        assert site.cli("apply", "--auto-approve", "--json").json()["changes"] == 0
        assert site.cli("backup", "alpha").code == 0
