"""Image granularity benchmark: which block size should an image's blocks be compared by?

An image file (1 GiB by default) of random bytes is backed up over SSH (a real OpenSSH
sshd on loopback, started for this run) into a fresh pool, then 1 % of its 4 KiB blocks
are rewritten at random offsets (seeded: the same offsets for every row) and the
incremental is timed. Bytes over the wire are the helper channel's, both directions
(``bytes_transferred``). One row per block size (``protocol.IMAGE_BLOCK_SIZE``, set in
the backing-up process), and one for ``rsync --inplace --no-whole-file`` of the same
change through the same sshd (its ``--stats`` bytes sent + received).

    sudo .venv/bin/python bench/image_granularity.py [--size-mib 1024] [--blocks 1024,256,64,16]

Prints a Markdown table on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssh as ssh_bench  # noqa: E402  (its sshd, user and log)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
KIB = 1024

WORKER = """
import json, sys, time
from costor import protocol
from costor.ops.backup.run import run_backup
from costor.ops.context import Context
protocol.IMAGE_BLOCK_SIZE = int(sys.argv[2])
ctx = Context(sys.argv[1], keep_indexes=True)
for line in sys.stdin:
    start = time.perf_counter()
    outcome = run_backup(ctx, line.strip())
    print(json.dumps({"elapsed": time.perf_counter() - start, **outcome.to_json()}), flush=True)
"""


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // (64 * MIB)):
            handle.write(os.urandom(64 * MIB))
        handle.write(os.urandom(size % (64 * MIB)))


def scatter(path: Path, size: int, fraction: float, seed: int = 23) -> int:
    rng = random.Random(seed)
    blocks = size // (4 * KIB)
    picked = rng.sample(range(blocks), int(blocks * fraction))
    data = random.Random(seed + 1).randbytes(4 * KIB * len(picked))
    with open(path, "r+b") as handle:
        for n, index in enumerate(picked):
            handle.seek(index * 4 * KIB)
            handle.write(data[n * 4 * KIB : (n + 1) * 4 * KIB])
    return len(picked) * 4 * KIB


class Worker:
    def __init__(
        self, work: Path, port: int, key: Path, image: Path, block: int, chunk_avg: int | None
    ) -> None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        lines = ["[costor]", 'state_dir = ".costor"', "", "[sites.bench]", "", "[pools.bench]"]
        lines += ['site = "bench"', 'backend = "local"', 'path = "pool"']
        lines += ['passphrase = { env = "BENCH_PASSPHRASE" }']
        lines += [f"chunk_avg_kib = {chunk_avg}" if chunk_avg else "", ""]
        lines += ["[clients.img]", 'site = "bench"', 'pool = "bench"', 'transport = "ssh"']
        lines += ['host = "127.0.0.1"']
        lines += [
            f'ssh = {{ user = "{ssh_bench.USER}", port = {port}, key = {{ file = "{key}" }}, '
            'python = "/usr/bin/python3" }'
        ]
        lines += [f'paths = ["{image.parent / "notes"}"]', f'images = ["{image}"]', ""]
        inventory = work / "inventory.toml"
        inventory.write_text("\n".join(lines))
        env = {**os.environ, "BENCH_PASSPHRASE": "benchmark", "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, "-m", "costor", "apply", "--auto-approve", "-c", str(inventory)],
            env=env,
            check=True,
            capture_output=True,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(inventory), str(block)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def backup(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("img\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the CoStor worker failed")
        return dict(json.loads(line))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def rsync_row(port: int, key: Path, pristine: Path, changed: Path, work: Path) -> dict[str, Any]:
    ssh = (
        f"ssh -p {port} -i {key} -c {ssh_bench.CIPHER} -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o Compression=no"
    )
    target = work / "rsync.img"
    shutil.copyfile(pristine, target)
    start = time.perf_counter()
    result = subprocess.run(
        ["rsync", "--inplace", "--no-whole-file", "--stats", "-e", ssh]
        + [f"{ssh_bench.USER}@127.0.0.1:{changed}", str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", result.stdout)[1].replace(",", ""))  # type: ignore[index]
    got = int(re.search(r"Total bytes received: ([\d,]+)", result.stdout)[1].replace(",", ""))  # type: ignore[index]
    assert target.read_bytes() == changed.read_bytes()
    return {"elapsed": elapsed, "bytes_transferred": sent + got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--blocks", default="1024,256,64,16", help="block sizes in KiB")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--chunk-avg-kib", type=int, help="the pool's chunk_avg_kib")
    args = parser.parse_args()
    size = args.size_mib * MIB
    ssh_bench.ensure_user()
    work = Path(tempfile.mkdtemp(prefix="costor-image-bench-"))
    work.chmod(0o755)
    data = work / "data"
    data.mkdir(mode=0o755)
    (data / "notes").mkdir(mode=0o755)
    (data / "notes" / "readme").write_text("the image's host\n")
    pristine = work / "pristine.img"
    image = data / "disk.img"
    ssh_bench.log(f"writing {args.size_mib} MiB of random bytes")
    write_random(pristine, size)
    (work / "sshd").mkdir()
    process, port, key, _host = ssh_bench.start_sshd(work / "sshd")
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    changed_bytes = 0
    try:
        for kib in (int(k) for k in args.blocks.split(",")):
            shutil.copyfile(pristine, image)
            image.chmod(0o644)
            site = work / f"site-{kib}"
            worker = Worker(site, port, key, image, kib * KIB, args.chunk_avg_kib)
            try:
                ssh_bench.log(f"{kib} KiB: the full backup")
                first = worker.backup()
                changed_bytes = scatter(image, size, args.fraction)
                ssh_bench.log(f"{kib} KiB: the incremental")
                second = worker.backup()
            finally:
                worker.stop()
            rows.append((f"CoStor, {kib} KiB blocks", second, first))
            shutil.rmtree(site, ignore_errors=True)
        ssh_bench.log("rsync --inplace --no-whole-file")
        rows.append(
            ("rsync --inplace --no-whole-file", rsync_row(port, key, pristine, image, work), None)
        )
    finally:
        process.terminate()
        process.wait()
    chunks = f"chunk_avg_kib = {args.chunk_avg_kib}" if args.chunk_avg_kib else "default chunks"
    print(
        f"Pool: {chunks}. Image {args.size_mib} MiB, {args.fraction:.0%} of its 4 KiB blocks "
        f"rewritten at random offsets ({changed_bytes / MIB:.1f} MiB); {os.cpu_count()} cores, loopback sshd.\n"
    )
    print(
        "| method | incremental: bytes over the wire | × changed bytes | time (s) "
        "| added to the pool | full backup time (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, incremental, whole in rows:
        wire = incremental["bytes_transferred"]
        added = (
            f"{incremental['bytes_added'] / MIB:.0f} MiB" if "bytes_added" in incremental else "–"
        )
        full = f"{whole['elapsed']:.1f}" if whole else "–"
        print(
            f"| {name} | {wire / MIB:.1f} MiB | {wire / changed_bytes:.2f} | "
            f"{incremental['elapsed']:.1f} | {added} | {full} |"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
