#!/usr/bin/env python3
"""Index benchmark: what a pool of many blobs costs to open and to back up into.

    python bench/index.py --blobs 10000000 --out docs/benchmarks-index.md
    python bench/index.py --blobs 200000 --out /tmp/index.md        # a smoke run

A pool is made by ``costor apply``; a small tree (``--files`` files) is backed up into it
by ``costor backup``. Then ``--blobs`` synthetic blobs (``--blob-size`` bytes of random
data each, ``--blobs-per-pack`` to a pack, like 1 MiB chunks in 32 MiB packs) are stored
through the engine's own writer (``Pool.put_blob``, the sealing, packing and index
segments a backup uses; fsync off to make it faster: what is measured is reading them).
Measured before and after, each in a new process:

- **opening the index**: ``Pool.load_index`` in a process that does nothing else; its
  time and the memory it adds (the process's peak RSS after the load minus its RSS
  before), per indexed blob;
- **a no-change backup** of the same tree by ``costor backup`` (the CLI, start-up, the
  state database and everything): wall time and peak RSS (``/usr/bin/time``); the
  difference of the peaks before and after, per indexed blob;
- for comparison, what the same segments cost as a dict of tuples (the index before this
  structure), in another process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "bench-only-passphrase"
MIB = 1024 * 1024

# Runs in a new process: open the pool, load its index, report time and memory.
OPEN_SCRIPT = r"""
import json, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
from costor.store.backends.local import LocalBackend
from costor.store.pool import Pool
import numpy  # imported before the baseline: its import is not the index's cost
pool = Pool.open(LocalBackend(sys.argv[1]), sys.argv[2])
mode = sys.argv[3]
with open("/proc/self/clear_refs", "w") as reset:  # VmHWM from here: not the KDF's peak
    reset.write("5")
before = rss("VmRSS:")
started = time.perf_counter()
if mode == "compact":
    pool.load_index()
    blobs = len(pool.index)
else:  # the index before: a dict of tuples, pack ids interned
    from costor.store.index import _segment_blocks
    from costor.store.pack import ENTRY
    index = {}
    for info in pool.backend.list("index/"):
        for records in _segment_blocks(pool._open_segment(info.name)):
            for raw, entries, _count in records:
                pack = sys.intern(raw.hex())
                for blob, kind, offset, length, raw_length in ENTRY.iter_unpack(entries):
                    index.setdefault(blob, (pack, kind, offset, length, raw_length))
    blobs = len(index)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "blobs": blobs, "before": before,
                  "after": rss("VmRSS:"), "peak": rss("VmHWM:")}))
"""

# Runs in a new process: store synthetic blobs through the pool's writer.
FILL_SCRIPT = r"""
import os, sys, time
from costor.store.backends.local import LocalBackend
from costor.store.pack import BlobType
from costor.store.pool import Pool
path, passphrase, count, size, per_pack = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
pool = Pool.open(LocalBackend(path, fsync=False), passphrase)
pool.load_index()
sealed = len(pool.codec.seal(BlobType.DATA, b"\0" * 32, os.urandom(size), compress=False))
pool.pack_size = sealed * per_pack  # this writer's packs: like 1 MiB chunks in 32 MiB packs
seed = os.urandom(16)
started = time.perf_counter()
for number in range(count):
    data = seed + number.to_bytes(8, "little") + os.urandom(max(0, size - 24))
    pool.put_blob(BlobType.DATA, data)
    if number % 1_000_000 == 999_999:
        pool.flush()
        print(f"{number + 1:,} blobs, {time.perf_counter() - started:.0f} s", flush=True)
pool.flush()
print(f"stored {count:,} blobs in {time.perf_counter() - started:.0f} s", flush=True)
"""


def sh(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB, /usr/bin/time) of one command."""
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        started = time.perf_counter()
        sh(["/usr/bin/time", "-f", "%M", "-o", timing.name, *cmd], env, cwd)
        seconds = time.perf_counter() - started
        peak_kib = int(Path(timing.name).read_text().split()[-1])
    return {"seconds": seconds, "peak_mib": peak_kib / 1024}


def open_index(pool: Path, mode: str, env: dict[str, str]) -> dict[str, Any]:
    out = sh([sys.executable, "-c", OPEN_SCRIPT, str(pool), PASSPHRASE, mode], env)
    result: dict[str, Any] = json.loads(out)
    return result


def make_tree(root: Path, files: int) -> None:
    rng = random.Random(20261207)
    for number in range(files):
        path = root / f"d{number % 50:02d}" / f"f{number:06d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1, 8192)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=10_000_000)
    parser.add_argument("--blob-size", type=int, default=64)
    parser.add_argument("--blobs-per-pack", type=int, default=32)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--work", type=Path, help="keep the pool here (default: a temp dir)")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the pool an earlier run left in --work"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="costor-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, COSTOR_BENCH_PASSPHRASE=PASSPHRASE, PYTHONPATH=str(ROOT))
    try:
        tree = work / "tree"
        if not tree.exists():
            make_tree(tree, args.files)
        # Two pools with the same tree backed up: "small" holds only its blobs, "large"
        # the synthetic ones too. --reuse keeps both from an earlier run (filling takes
        # minutes); each run measures both with the code of the day.
        small_site, large_site = Site(work / "small", tree), Site(work / "large", tree)
        if not (args.reuse and (large_site.pool / "index").exists()):
            for site in (small_site, large_site):
                shutil.rmtree(site.base, ignore_errors=True)
                site.create(env)
            fill_started = time.monotonic()
            print(fill(args, large_site.pool, env), flush=True)
            (work / "fill.json").write_text(json.dumps(time.monotonic() - fill_started))
        fill_seconds = json.loads((work / "fill.json").read_text())
        small = {
            "open": open_index(small_site.pool, "compact", env),
            "backup": small_site.backup(env),
        }
        large = {
            "open": open_index(large_site.pool, "compact", env),
            "dict": open_index(large_site.pool, "dict", env),
            "backup": large_site.backup(env),
        }
        print(f"small pool: {small}\nlarge pool: {large}", flush=True)
        packs = sum(1 for _ in (large_site.pool / "packs").rglob("*") if _.is_file())
        segments = sum(1 for _ in (large_site.pool / "index").iterdir())
        write(args, small, large, fill_seconds, packs, segments, time.monotonic() - started)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


class Site:
    """A state directory, an inventory and a pool holding one client's tree."""

    def __init__(self, base: Path, tree: Path) -> None:
        self.base, self.tree = base, tree
        self.pool = base / "pool"
        self.inventory = base / "inventory.toml"
        self.costor = [sys.executable, "-m", "costor"]

    def create(self, env: dict[str, str]) -> None:
        self.base.mkdir(parents=True)
        self.inventory.write_text(
            '[costor]\nstate_dir = ".costor"\n[sites.bench]\n[pools.bench]\nsite = "bench"\n'
            f'backend = "local"\npath = {json.dumps(str(self.pool))}\n'
            'passphrase = { env = "COSTOR_BENCH_PASSPHRASE" }\n'
            '[clients.data]\nsite = "bench"\npool = "bench"\ntransport = "local"\n'
            f"paths = [{json.dumps(str(self.tree))}]\n"
        )
        sh([*self.costor, "apply", "-c", str(self.inventory), "--auto-approve"], env, self.base)
        sh([*self.costor, "backup", "-c", str(self.inventory), "data"], env, self.base)

    def backup(self, env: dict[str, str]) -> dict[str, float]:
        """A no-change backup, measured."""
        command = [*self.costor, "backup", "-c", str(self.inventory), "--json", "data"]
        return timed(command, env, self.base)


def fill(args: argparse.Namespace, pool: Path, env: dict[str, str]) -> str:
    """The synthetic blobs, stored by another process."""
    return sh(
        [
            sys.executable,
            "-c",
            FILL_SCRIPT,
            str(pool),
            PASSPHRASE,
            str(args.blobs),
            str(args.blob_size),
            str(args.blobs_per_pack),
        ],
        env,
    )


def write(
    args: argparse.Namespace,
    small: dict[str, Any],
    large: dict[str, Any],
    fill_seconds: float,
    packs: int,
    segments: int,
    total_seconds: float,
) -> None:
    blobs = large["open"]["blobs"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    compact = large["open"]
    dict_open = large["dict"]
    added = compact["peak"] - compact["before"]
    added_dict = dict_open["peak"] - dict_open["before"]
    backup_delta = (large["backup"]["peak_mib"] - small["backup"]["peak_mib"]) * MIB
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    rows = [
        ("Blobs indexed", f"{blobs:,}", ""),
        ("Opening the index (s)", f"{compact['seconds']:.2f}", f"{dict_open['seconds']:.2f}"),
        (
            "Memory the open adds: peak RSS after minus RSS before (MiB)",
            f"{added / MIB:.0f}",
            f"{added_dict / MIB:.0f}",
        ),
        (
            "… per indexed blob (bytes)",
            f"**{added / blobs:.1f}**",
            f"{added_dict / blobs:.1f}",
        ),
        (
            "Memory held after the open, per blob (bytes)",
            f"{(compact['after'] - compact['before']) / blobs:.1f}",
            f"{(dict_open['after'] - dict_open['before']) / blobs:.1f}",
        ),
        (
            f"`costor backup`, no change, {args.files:,} files: time, small pool → large (s)",
            f"{small['backup']['seconds']:.2f} → {large['backup']['seconds']:.2f}",
            "",
        ),
        (
            "… peak RSS, small pool → large (MiB)",
            f"{small['backup']['peak_mib']:.0f} → {large['backup']['peak_mib']:.0f}",
            "",
        ),
        ("… peak RSS added per indexed blob (bytes)", f"**{backup_delta / blobs:.1f}**", ""),
    ]
    lines = [
        "# Benchmark: the blob index at scale",
        "",
        "What opening a pool's index and a no-change backup into it cost when the pool holds"
        " many blobs. This file is generated by `bench/index.py`; do not edit it by hand.",
        "",
        "Reproduce (from the project root, venv active; `time` installed with apt):",
        "",
        "```sh",
        f"python bench/index.py --blobs {args.blobs} --blob-size {args.blob_size} "
        f"--blobs-per-pack {args.blobs_per_pack} --files {args.files} --out {args.out}",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| Date | {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC |",
        f"| CPU | {cpu} × {os.cpu_count()} |",
        f"| Kernel, Python | {platform.release()}, Python {platform.python_version()} |",
        f"| CoStor | commit `{commit}` |",
        f"| Pool | {blobs:,} blobs of {args.blob_size} B in {packs:,} packs "
        f"({args.blobs_per_pack} a pack), {segments} index segments; stored in "
        f"{fill_seconds:.0f} s through `Pool.put_blob` |",
        f"| Run time | {total_seconds / 60:.1f} min |",
        "",
        "Method: each measurement is a new process. *Opening*: `Pool.load_index()` alone,"
        " its wall time; memory from `/proc/self/status` (VmRSS before the load, VmHWM and"
        " VmRSS after). *Backup*: `costor backup --json` of the same unchanged tree, wall"
        " time and `/usr/bin/time -f %M`, first with the pool holding only the tree's own"
        " blobs, then with the synthetic ones added. The right column loads the same"
        " segments into a dict of tuples, what the index was before it was made compact.",
        "",
        "| Metric | CoStor (compact index) | dict of tuples (before) |",
        "|---|---:|---:|",
        *(f"| {name} | {value} | {other} |" for name, value, other in rows),
        "",
        "Targets (issue 22): at most 64 bytes of memory per indexed blob for opening and for"
        " a no-change backup; opening in under 5 s.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
