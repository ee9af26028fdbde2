#!/usr/bin/env python3
"""Retention and prune benchmark: CoStor vs restic on the same data, in the same run.

    python bench/gc.py --out docs/benchmarks-gc.md
    python bench/gc.py --quick --out /tmp/gc.md        # a smoke run

One generated tree is backed up ``--snapshots`` times by each tool; between backups
``--churn`` of the files get new random content, a few are deleted and a few added, so
old snapshots hold data the newer ones do not. Then each tool keeps the last 5
snapshots and reclaims the rest:

- CoStor: ``costor forget`` (policy ``retention = { last = 5 }``), then
  ``costor prune --safety-window 0`` (two-phase; with a zero window and no backup
  running it deletes in the same run);
- restic: ``restic forget --keep-last 5``, then ``restic prune``.

Then ``check --read-data`` of each. Wall time and peak RSS (``wait4``, per process) of
each step; repository sizes before and after. Raw numbers go to WORK/results.json.
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

ROOT = Path(__file__).resolve().parent.parent
COSTOR = [sys.executable, "-m", "costor"]
PASSPHRASE = "bench-only-passphrase"
MIB = 1024 * 1024


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes from ``os.wait4``, stdout) of one process."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(argv, env=env, stdout=out_file, stderr=err_file)
        _pid, status, usage = os.wait4(process.pid, 0)
        elapsed = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{err_file.read().decode()}")
        return elapsed, usage.ru_maxrss * 1024, out_file.read().decode()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def generate(root: Path, files: int, size: int, rng: random.Random) -> None:
    root.mkdir(parents=True)
    for i in range(files):
        sub = root / f"d{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(rng.randbytes(rng.randint(size // 2, size * 3 // 2)))


def churn(root: Path, share: float, rng: random.Random, size: int) -> None:
    names = sorted(root.rglob("*.bin"))
    for path in rng.sample(names, max(1, int(len(names) * share))):
        path.write_bytes(rng.randbytes(rng.randint(size // 2, size * 3 // 2)))
    for path in rng.sample(names, max(1, len(names) // 200)):
        if path.exists():
            path.unlink()
    for _ in range(max(1, len(names) // 200)):
        (root / "d00" / f"new{rng.getrandbits(32):08x}.bin").write_bytes(rng.randbytes(size))


def inventory(work: Path, tree: Path) -> Path:
    path = work / "inventory.toml"
    path.write_text(
        "\n".join(
            [
                "[costor]",
                'state_dir = "state"',
                "",
                "[sites.hq]",
                "",
                "[pools.main]",
                'site = "hq"',
                'backend = "local"',
                'path = "costor-pool"',
                'passphrase = { env = "BENCH_PASSPHRASE" }',
                "",
                "[policies.keep5]",
                'schedule = "0 2 * * *"',
                "retention = { last = 5 }",
                "",
                "[clients.bench]",
                'site = "hq"',
                'pool = "main"',
                'policy = "keep5"',
                'transport = "local"',
                f"paths = [{json.dumps(str(tree))}]",
                "",
            ]
        )
    )
    return path


def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(20261203)
    tree = work / "tree"
    generate(tree, args.files, args.file_size, rng)
    env = {
        **os.environ,
        "BENCH_PASSPHRASE": PASSPHRASE,
        "RESTIC_PASSWORD": PASSPHRASE,
        "RESTIC_REPOSITORY": str(work / "restic-repo"),
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
    }
    inv = inventory(work, tree)
    c = [*COSTOR]
    run([*c, "apply", "--auto-approve", "-c", str(inv)], env)
    run(["restic", "init", "--repository-version", "2"], env)
    backup = {"costor": 0.0, "restic": 0.0}
    for number in range(args.snapshots):
        if number:
            churn(tree, args.churn, rng, args.file_size)
        backup["costor"] += run([*c, "backup", "bench", "-c", str(inv)], env)[0]
        backup["restic"] += run(["restic", "backup", "--host", "bench", str(tree)], env)[0]
    result: dict[str, Any] = {"backup_total_s": backup}
    pool, repo = work / "costor-pool", work / "restic-repo"
    result["size_before"] = {"costor": du(pool), "restic": du(repo)}
    steps: dict[str, dict[str, Any]] = {}
    steps["costor_forget"] = run([*c, "forget", "--json", "-c", str(inv)], env)
    steps["costor_prune"] = run(
        [*c, "prune", "--safety-window", "0", "--json", "-c", str(inv)], env
    )
    steps["restic_forget"] = run(["restic", "forget", "--keep-last", "5"], env)
    steps["restic_prune"] = run(["restic", "prune"], env)
    result["size_after"] = {"costor": du(pool), "restic": du(repo)}
    prune_doc = json.loads(steps["costor_prune"][2])["pools"][0]
    result["costor_prune_report"] = prune_doc
    steps["costor_check"] = run([*c, "check", "--read-data", "-c", str(inv)], env)
    steps["restic_check"] = run(["restic", "check", "--read-data"], env)
    result["steps"] = {name: {"s": v[0], "rss": v[1]} for name, v in steps.items()}
    kept = json.loads(run([*c, "snapshots", "--json", "-c", str(inv)], env)[2])
    result["costor_snapshots_after"] = len(kept)
    result["tree_bytes"] = du(tree)
    return result


def median(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        value: Any = r
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def report(args: argparse.Namespace, runs: list[dict[str, Any]], took: float) -> str:
    restic = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
    from costor import __version__

    def step(name: str) -> tuple[float, float]:
        return median(runs, "steps", name, "s"), median(runs, "steps", name, "rss") / MIB

    lines = [
        "# Retention and prune: CoStor vs restic",
        "",
        f"- date: {_dt.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Linux {platform.release()}; Python {platform.python_version()}; "
        f"CoStor {__version__}; {restic}",
        f"- data: {args.files} random files of ~{args.file_size // 1024} KiB "
        f"({median(runs, 'tree_bytes') / MIB:.0f} MiB), {args.snapshots} snapshots, "
        f"{args.churn:.0%} of the files rewritten between snapshots (and 0.5 % deleted, 0.5 % "
        "added); then keep the last 5",
        f"- command: `python bench/gc.py{' --quick' if args.quick else ''} --repeat {args.repeat} "
        f"--out …`; medians of {args.repeat} run(s); peak RSS per process (`wait4`); this run "
        f"took {took / 60:.1f} min",
        "",
        "| step | CoStor | restic |",
        "|---|---|---|",
    ]
    for label, ours, theirs in (
        ("forget (keep last 5)", "costor_forget", "restic_forget"),
        ("prune", "costor_prune", "restic_prune"),
        ("check --read-data", "costor_check", "restic_check"),
    ):
        (cs, cr), (rs, rr) = step(ours), step(theirs)
        lines.append(f"| {label} | {cs:.2f} s, {cr:.0f} MiB | {rs:.2f} s, {rr:.0f} MiB |")
    before_c, before_r = (
        median(runs, "size_before", "costor"),
        median(runs, "size_before", "restic"),
    )
    after_c, after_r = median(runs, "size_after", "costor"), median(runs, "size_after", "restic")
    lines += [
        f"| repository before | {before_c / MIB:.1f} MiB | {before_r / MIB:.1f} MiB |",
        f"| repository after | {after_c / MIB:.1f} MiB | {after_r / MIB:.1f} MiB |",
        f"| reclaimed | {(before_c - after_c) / MIB:.1f} MiB | {(before_r - after_r) / MIB:.1f} MiB |",
    ]
    check_c = after_c / median(runs, "steps", "costor_check", "s") / MIB
    check_r = after_r / median(runs, "steps", "restic_check", "s") / MIB
    lines += [
        f"| check throughput (repository bytes / s) | {check_c:.0f} MiB/s | {check_r:.0f} MiB/s |",
        "",
        f"- backups (not the subject here, for scale): CoStor "
        f"{median(runs, 'backup_total_s', 'costor'):.1f} s, restic "
        f"{median(runs, 'backup_total_s', 'restic'):.1f} s for all {args.snapshots}, each a new "
        "process.",
        "- CoStor's prune is two-phase: by default a pack no snapshot needs is only marked and "
        "deleted by a later prune once the safety window (1 h) has passed and the backups "
        "running at marking time have finished; `--safety-window 0` with nothing running "
        "deletes in the same run, which is what is measured. restic's `prune` takes an "
        "exclusive lock: no backup can run meanwhile. Both repack partly used packs until "
        "at most 5 % of the needed bytes are left unused (CoStor's `max_unused`, restic's "
        "`--max-unused`); CoStor also repacks any pack at least 50 % unused.",
        "- Each CoStor command is a new Python process (~0.7 s of imports and one argon2id "
        "key derivation, ~0.2 s, are in every CoStor time); restic is a Go binary.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work")
    parser.add_argument("--out")
    args = parser.parse_args()
    args.files = 200 if args.quick else 1000
    args.file_size = 128 * 1024 if args.quick else 256 * 1024
    args.snapshots = 8 if args.quick else 30
    args.churn = 0.05
    base = Path(args.work or tempfile.mkdtemp(prefix="costor-gc-"))
    started = time.monotonic()
    runs = []
    for number in range(args.repeat):
        work = base / f"run{number}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"run {number + 1} of {args.repeat}", file=sys.stderr, flush=True)
        runs.append(one_run(args, work))
        print(json.dumps(runs[-1]["steps"]), file=sys.stderr, flush=True)
    (base / "results.json").write_text(json.dumps(runs, indent=1))
    text = report(args, runs, time.monotonic() - started)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
