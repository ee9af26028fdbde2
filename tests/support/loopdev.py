"""A real block device for tests: a loop device (``losetup -f --show FILE``) on a small
file in a temp dir, always detached afterwards. Skips where there is no losetup or no
root (tests use real parts, not mocks)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """The path of a block device (``/dev/loopN``) over 1 MiB of known bytes."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("loop devices need losetup and root")
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 4096)
    attached = subprocess.run(
        [losetup, "-f", "--show", str(image)], capture_output=True, text=True, timeout=30
    )
    if attached.returncode != 0:
        pytest.skip(f"losetup cannot attach a loop device here: {attached.stderr.strip()}")
    device = Path(attached.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run([losetup, "-d", str(device)], capture_output=True, timeout=30)
