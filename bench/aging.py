#!/usr/bin/env python3
"""Aging benchmark: does restoring the n-th incremental of a changing tree cost more
than restoring the first? CoStor and restic, same data, same run.

    python bench/aging.py --out docs/benchmarks-aging.md
    python bench/aging.py --quick --out /tmp/aging.md      # a smoke run

One tree (bench/run.py's generator) is backed up ``--backups`` times by each tool;
between backups ``--churn`` of the files are changed (a 4 KiB region rewritten in place
and 1–16 KiB appended), 1 % deleted and as many new ones added, so the latest snapshot's
blobs are spread over the packs of every backup. Then the first and the latest snapshot
are each restored ``--repeat`` times, in turn, into empty directories on a tmpfs when
there is one (``--restore-to``; warm page cache: the pool
is read once first) and compared with what was backed up. As a pool ages its latest
snapshot's data lies in more, older packs: that is what this measures (Duplicacy's
benchmark showed restic's restores slowing with each incremental).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as local_bench  # noqa: E402  (the generator, the tools, the measuring)

MIB = 1024 * 1024


def change(root: Path, rng: random.Random, churn: float, step: int) -> int:
    """Change ``churn`` of the files, delete 1 %, add as many; returns files changed."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    changed = rng.sample(files, max(1, int(len(files) * churn)))
    for path in changed:
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(rng.randrange(max(1, size - 4096)))
            handle.write(rng.randbytes(min(4096, size)))
            handle.seek(0, os.SEEK_END)
            handle.write(rng.randbytes(rng.randint(16, 16 * 1024)))
    gone = [p for p in rng.sample(files, max(1, len(files) // 100)) if p not in changed]
    for path in gone:
        path.unlink()
    for number in range(len(gone)):
        (root / f"new-{step:02d}-{number:04d}.bin").write_bytes(
            rng.randbytes(rng.randint(1024, 64 * 1024))
        )
    return len(changed)


def snapshot_ids(tool: local_bench.Tool) -> list[str]:
    """The tool's snapshots, oldest first."""
    if isinstance(tool, local_bench.CoStor):
        out = subprocess.run(
            [tool.exe, "snapshots", "-c", str(tool.inventory), "--json"],
            env=tool.env,
            cwd=tool.base,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        docs = json.loads(out)
        docs = docs.get("snapshots", docs) if isinstance(docs, dict) else docs
        return [d["id"] for d in sorted(docs, key=lambda d: d["time"])]
    out = subprocess.run(
        ["restic", "snapshots", "--json"], env=tool.env, capture_output=True, text=True, check=True
    ).stdout
    return [d["id"] for d in sorted(json.loads(out), key=lambda d: d["time"])]


def restore(tool: local_bench.Tool, snapshot: str, target: Path) -> local_bench.Measured:
    local_bench.rmtree(target)
    if isinstance(tool, local_bench.CoStor):
        command = [tool.exe, "restore", "-c", str(tool.inventory), "--json"]
        return local_bench.measure(
            [*command, "--target", str(target), snapshot], env=tool.env, cwd=tool.base
        )
    return local_bench.measure(
        ["restic", "restore", snapshot, "--target", str(target)], env=tool.env
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backups", type=int, default=12)
    parser.add_argument("--churn", type=float, default=0.10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, help="work here and keep it (default: a temp dir)")
    parser.add_argument(
        "--restore-to",
        type=Path,
        help="restore into this directory (default: /dev/shm, a tmpfs, when it exists:"
        " what is measured is reading the pool, not the disk's cost of creating files)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.quick:
        args.backups, args.repeat = min(args.backups, 4), 1
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="costor-aging-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    restore_to = args.restore_to or local_bench.default_restore_dir(work, 2 * 1024 * MIB)
    args.restore_to_shown = f"`{restore_to}` ({local_bench.mount_kind(restore_to)})"
    try:
        data = work / "data"
        params = local_bench.generated_params(True)
        params.update(small_files=4_000, large_size=16 * MIB)
        local_bench.generate(data, params)
        tools: list[local_bench.Tool] = [
            local_bench.CoStor(work / "costor", data, local_bench.find_costor()),
            local_bench.Restic(work / "restic", data),
        ]
        for tool in tools:
            tool.reset()
            tool.init()
        rng = random.Random(20261207)
        for step in range(args.backups):
            if step:
                change(data, rng, args.churn, step)
            for tool in tools:
                tool.backup()
            if step == 0:  # what the first snapshot must restore to
                shutil.copytree(data, work / "first", symlinks=True)
            local_bench.log(f"backup {step + 1} of {args.backups}")
        results: dict[str, dict[str, Any]] = {}
        for tool in tools:
            ids = snapshot_ids(tool)
            assert len(ids) == args.backups, (tool.name, ids)
            local_bench.warm_up(tool.repo)
            row: dict[str, Any] = {"packs": count_packs(tool)}
            cases = {"first": (ids[0], work / "first"), "latest": (ids[-1], data)}
            times: dict[str, list[float]] = {label: [] for label in cases}
            peaks: dict[str, list[float]] = {label: [] for label in cases}
            identical: dict[str, bool] = {}
            target = restore_to / f"costor-aging-restore-{tool.name}"
            # First and latest in turn, so a drift of the machine's speed hits both.
            for attempt in range(args.repeat):
                for label, (snapshot, source) in cases.items():
                    measured = restore(tool, snapshot, target)
                    times[label].append(measured.seconds)
                    peaks[label].append(measured.rss_mib)
                    if attempt == args.repeat - 1:
                        # Both tools restore under the target at the path backed up.
                        compared = local_bench.compare_trees(source, target / str(data).lstrip("/"))
                        identical[label] = compared["ok"]
                    local_bench.rmtree(target)
            for label in cases:
                row[label] = {
                    "median": statistics.median(times[label]),
                    "spread": (min(times[label]), max(times[label])),
                    "rss": max(peaks[label]),
                    "identical": identical[label],
                }
            results[tool.name] = row
            local_bench.log(f"{tool.name}: {row}")
        info = {"tree": {"files": f"{local_bench.tree_stats(data)['files']:,}"}}
        write(args, results, info, time.monotonic() - started)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def count_packs(tool: local_bench.Tool) -> int:
    folder = tool.repo / ("packs" if isinstance(tool, local_bench.CoStor) else "data")
    return sum(1 for p in folder.rglob("*") if p.is_file())


def write(
    args: argparse.Namespace, results: dict[str, Any], info: dict[str, Any], seconds: float
) -> None:
    commit = local_bench.costor_commit()
    lines = [
        "# Benchmark: restoring the first and the latest of many incrementals",
        "",
        "Is the latest snapshot of an aging pool slower to restore than the first? CoStor"
        " and restic on the same data in the same run. This file is generated by"
        " `bench/aging.py`; do not edit it by hand.",
        "",
        "Reproduce (from the project root, venv active; restic and time installed with apt):",
        "",
        "```sh",
        f"python bench/aging.py --backups {args.backups} --churn {args.churn} "
        f"--repeat {args.repeat} --out {args.out}"
        + (f" --restore-to {args.restore_to}" if args.restore_to else ""),
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| Date | {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC |",
        f"| Machine | {os.cpu_count()} cores, kernel {platform.release()}, Python "
        f"{platform.python_version()} |",
        f"| CoStor | commit `{commit}` |",
        f"| Tree | bench/run.py's generator: {info['tree']['files']} files at the end; "
        f"{args.backups} backups, {args.churn:.0%} of the files changed before each"
        " incremental, 1 % deleted and as many added |",
        f"| Run time | {seconds / 60:.1f} min |",
        "",
        "Times are wall-clock seconds of the whole restore command into an empty directory"
        f" under {args.restore_to_shown}, first and latest in turn, median of {args.repeat}"
        " (min–max), warm page cache; peak RSS from"
        " `/usr/bin/time`. *Ratio* is the latest's median over the first's.",
        "",
        "| Tool | packs / data files | first (s) | latest (s) | ratio | peak RSS first / latest"
        " (MiB) | restored trees |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in results.items():
        first, latest = row["first"], row["latest"]
        lines.append(
            f"| {name} | {row['packs']:,} | {first['median']:.2f} "
            f"({first['spread'][0]:.2f}–{first['spread'][1]:.2f}) | {latest['median']:.2f} "
            f"({latest['spread'][0]:.2f}–{latest['spread'][1]:.2f}) | "
            f"**{latest['median'] / first['median']:.2f}** | {first['rss']:.0f} / "
            f"{latest['rss']:.0f} | "
            f"{'identical' if first['identical'] and latest['identical'] else 'DIFFERENT'} |"
        )
    lines += [
        "",
        "Target (issue 22): CoStor's latest no slower than its first, within the run's noise.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
