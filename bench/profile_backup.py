#!/usr/bin/env python3
"""Profile one CoStor first backup with py-spy and summarise where the time goes.

    python bench/profile_backup.py --data /tmp/costor-bench/data/generated

(``bench/run.py`` creates that data set.) For each mode a fresh pool is made, the data is
read once (warm cache), and ``costor backup`` runs under ``py-spy record -f raw``:

* ``wall``: ``--threads --idle`` — every thread, running or waiting: what each thread
  spends its wall-clock time on;
* ``cpu``: ``--threads`` — only samples where the thread is on a CPU;
* ``gil``: ``--threads --gil`` — only samples where the thread holds the GIL: the
  Python-level work that competes for the one interpreter lock.

The raw files (``WORK/profile-MODE.txt``, collapsed stacks, one per line with a count)
stay for flame-graph tools; this script prints per thread group (MainThread = the
walker, ``file`` = read/chunk/hash workers, ``blob`` = compress/seal workers) the
leaf functions (self samples) and the CoStor functions with the most inclusive samples.

``--memory`` instead measures where the memory goes (issue 22), on a fresh pool: a
first backup, a no-change incremental and a restore, each run twice: once under
``/usr/bin/time`` (its peak RSS, undisturbed), once with ``tracemalloc`` on (which
inflates RSS with its own traces) to print, at the traced peak, the source lines that
hold the most memory. What tracemalloc does not see (argon2's 64 MiB, zstd contexts,
memory glibc keeps after it is freed) is the difference between the two. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

MODES = {
    "wall": ["--threads", "--idle"],
    "cpu": ["--threads"],
    "gil": ["--threads", "--gil"],
}
PASSPHRASE = "costor-bench-passphrase-not-secret"
# Run inside the costor process for --memory: the CLI's main under tracemalloc, with a
# sampler keeping the snapshot taken at the highest traced size; its top lines on stderr.
TRACED = """
import sys, threading, tracemalloc
tracemalloc.start(1)
best, stop = [0, None], threading.Event()
def sample():
    while not stop.wait(0.05):
        size = tracemalloc.get_traced_memory()[0]
        if size > best[0] * 1.05 + (1 << 20):
            best[0], best[1] = size, tracemalloc.take_snapshot()
threading.Thread(target=sample, daemon=True).start()
from costor.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    stop.set()
    top = (best[1] or tracemalloc.take_snapshot()).statistics("lineno")[:TOP]
    print(f"@@ traced peak {tracemalloc.get_traced_memory()[1] / 2**20:.1f} MiB", file=sys.stderr)
    for stat in top:
        print(f"@@ {stat.size / 2**20:8.1f} MiB {stat.count:9d} blocks  {stat.traceback[0]}", file=sys.stderr)
sys.exit(code)
"""
THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?::\s*(?P<name>[^;]*))?$")


def thread_group(name: str | None) -> str:
    if not name:
        return "MainThread"
    return re.sub(r"_\d+$", "", name)


def parse(path: Path) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]], Counter[str]]:
    """Per thread group: self samples per leaf frame, inclusive samples per frame."""
    leaf: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        group = "?"
        match = THREAD.match(frames[0])
        if match:
            group = thread_group(match.group("name"))
            frames = frames[1:]
        totals[group] += count
        if frames:
            leaf[group][_short(frames[-1])] += count
        for frame in set(_short(f) for f in frames):
            inclusive[group][frame] += count
    return leaf, inclusive, totals


def _short(frame: str) -> str:
    # "Pool.store_blob (costor/store/pool.py:339)" -> keep the function and file, drop line
    return re.sub(r":\d+\)$", ")", frame.strip())


def memory(args: argparse.Namespace, costor: str) -> None:
    """Peak RSS and tracemalloc's top lines of a first backup, a no-change incremental
    and a restore of ``args.data`` into a fresh pool."""
    run_dir = args.work / "run-memory"
    inventory, env = _prepare(run_dir, args, costor)
    python = str(Path(costor).parent / "python")
    traced = [python, "-c", TRACED.replace("TOP", str(args.top))]
    steps = {
        "first backup": ["backup", "-c", str(inventory), "--json", "data"],
        "no-change incremental": ["backup", "-c", str(inventory), "--json", "data"],
        "restore": [
            "restore",
            "-c",
            str(inventory),
            "--json",
            "--target",
            "RESTORE",
            "data:latest",
        ],
    }
    for number, (step, command) in enumerate(steps.items()):
        rss = []
        for prefix in ([costor], traced):
            target = run_dir / f"restore-{len(rss)}"
            shutil.rmtree(target, ignore_errors=True)
            full = [*prefix, *[str(target) if part == "RESTORE" else part for part in command]]
            timed = ["/usr/bin/time", "-f", "@@RSS %M", *full]
            proc = subprocess.run(timed, env=env, cwd=run_dir, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{step} failed: {proc.stderr[-2000:]}")
            lines = [line[2:] for line in proc.stderr.splitlines() if line.startswith("@@")]
            rss.append(int(lines[-1].split()[1]) / 1024)
            shutil.rmtree(target, ignore_errors=True)
            if step != "restore" and prefix == [costor] and number == 0:
                # the traced run of a first backup must find an empty pool again
                shutil.rmtree(run_dir)
                inventory, env = _prepare(run_dir, args, costor)
        print(f"## {step}: peak RSS {rss[0]:.0f} MiB ({rss[1]:.0f} MiB with tracemalloc on)")
        for line in lines[:-1]:
            print(f"   {line}")
        print(flush=True)


def _prepare(run_dir: Path, args: argparse.Namespace, costor: str) -> tuple[Path, dict[str, str]]:
    """A fresh pool at ``run_dir`` (made by ``costor apply``); its inventory and env."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    inventory = run_dir / "inventory.toml"
    inventory.write_text(
        '[costor]\nstate_dir = ".costor"\n[sites.bench]\n[pools.bench]\nsite = "bench"\n'
        f'backend = "local"\npath = {json.dumps(str(run_dir / "pool"))}\n'
        'passphrase = { env = "COSTOR_BENCH_PASSPHRASE" }\n'
        '[clients.data]\nsite = "bench"\npool = "bench"\ntransport = "local"\n'
        f"paths = [{json.dumps(str(args.data))}]\n"
    )
    env = dict(
        os.environ,
        COSTOR_BENCH_PASSPHRASE=PASSPHRASE,
        PYTHONPYCACHEPREFIX=str(args.work / "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [costor, "apply", "-c", str(inventory), "--auto-approve"],
        env=env,
        cwd=run_dir,
        check=True,
        capture_output=True,
    )
    return inventory, env


def record(mode: str, args: argparse.Namespace, costor: str, pyspy: str) -> Path:
    work: Path = args.work
    run_dir = work / f"run-{mode}"
    inventory, env = _prepare(run_dir, args, costor)  # bytecode cached, as bench/run.py
    # warm cache, as in bench/run.py
    for dirpath, _dirs, files in os.walk(args.data):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as handle:
                while handle.read(1 << 20):
                    pass
    os.sync()
    output = work / f"profile-{mode}.txt"
    cmd = [
        pyspy,
        "record",
        "-f",
        "raw",
        "-r",
        str(args.rate),
        "-o",
        str(output),
        *MODES[mode],
        "--",
        costor,
        "backup",
        "-c",
        str(inventory),
        "--json",
        "data",
    ]
    proc = subprocess.run(cmd, env=env, cwd=run_dir, capture_output=True, text=True, check=True)
    text = proc.stdout
    duration = json.loads(text[text.index("{") : text.rindex("}") + 1]).get("duration_s")
    print(f"## mode {mode}: {' '.join(cmd)}\n   backup duration_s={duration}", flush=True)
    return output


def summarise(path: Path, top: int) -> None:
    leaf, inclusive, totals = parse(path)
    grand = sum(totals.values())
    print(f"   samples: {grand} — " + ", ".join(f"{g} {n}" for g, n in totals.most_common()))
    for group, total in totals.most_common():
        print(f"\n   [{group}] {total} samples; self (leaf) top {top}:")
        for frame, count in leaf[group].most_common(top):
            print(f"     {count:6d} {100 * count / total:5.1f}%  {frame}")
        costor_frames = [(f, c) for f, c in inclusive[group].most_common() if "costor/" in f]
        print(f"   [{group}] inclusive, CoStor frames, top {top}:")
        for frame, count in costor_frames[:top]:
            print(f"     {count:6d} {100 * count / total:5.1f}%  {frame}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/costor-bench/data/generated"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/costor-bench/profile"))
    parser.add_argument("--modes", default="wall,cpu,gil")
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--summarise-only", action="store_true", help="re-read existing raw files")
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS and tracemalloc's top lines instead"
    )
    args = parser.parse_args()
    args.data = args.data.resolve()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    costor = str(bindir / "costor") if (bindir / "costor").exists() else shutil.which("costor")
    pyspy = str(bindir / "py-spy") if (bindir / "py-spy").exists() else shutil.which("py-spy")
    if args.memory:
        if not costor:
            raise SystemExit("costor must be installed (activate the venv)")
        memory(args, costor)
        return 0
    if not costor or not pyspy:
        raise SystemExit("costor and py-spy must be installed (activate the venv)")
    for mode in [m for m in args.modes.split(",") if m]:
        if args.summarise_only:
            output = args.work / f"profile-{mode}.txt"
            print(f"## mode {mode}: {output}")
        else:
            output = record(mode, args, costor, pyspy)
        summarise(output, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
