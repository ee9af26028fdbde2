#!/usr/bin/env python3
"""Start-up cost: a new ``costor`` process against restic's, same machine, same run.

    python bench/startup.py --out /tmp/startup.md     # ~2 min
    python bench/startup.py --rounds 30               # more rounds, tighter medians

A pool with ``--snapshots`` (20) snapshots made by ``costor backup`` of a small tree
(200 files; one file changed before each backup) and a restic repository with the same
snapshots of the same tree; then, in rounds, each command once per round in turn (so
that a busy moment of a shared machine falls on all of them alike): ``costor --version``
against ``restic version``, ``costor snapshots --json`` against ``restic snapshots
--json``, and the interpreter's own start (``python -c pass``, with and without
``site``) as the floor any Python command pays. Medians, min–max in brackets.

Then one more ``costor snapshots --json`` through :data:`DRIVER`, which says where that
process's time goes (imports, the key derivation and on which thread, the rest).
bench/ssh.py uses the same driver for a ``costor backup`` of a host over SSH.

Bytecode is compiled first (``compileall``), as ``pip install`` does: a process that
compiles CoStor's modules each time (PYTHONDONTWRITEBYTECODE with no ``__pycache__``)
measures the compiler, not CoStor.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "startup benchmark passphrase"

# Runs ``costor VERB …`` in this process as `costor` would (cli/main.py), timing its
# parts: the imports of the verb's use case, then the named functions (time inside them,
# summed over calls and threads; a thread's time overlaps the main thread's). Writes one
# JSON document to $COSTOR_BREAKDOWN_OUT. argv: VERB_MODULES (comma-separated) ARGS…
DRIVER = r"""
import contextlib, importlib, io, json, os, sys, threading, time
started = time.perf_counter()
modules, arguments = sys.argv[1].split(","), sys.argv[2:]
lock = threading.Lock()
spent = {}  # name -> [seconds, calls, threads]
order = []  # the names in the order they are listed below (the report's order)
intervals = []  # [name, thread, start, end]
host = {}

def timed(module, attribute, name, interval=False):
    try:
        owner = importlib.import_module(module)
    except ImportError:
        return
    path = attribute.split(".")
    for part in path[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return
    function = getattr(owner, path[-1], None)
    if function is None:
        return
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            end = time.perf_counter()
            thread = threading.current_thread().name
            with lock:
                entry = spent.setdefault(name, [0.0, 0, []])
                entry[0] += end - begin
                entry[1] += 1
                if thread not in entry[2]:
                    entry[2].append(thread)
                if interval:
                    intervals.append([name, thread, begin - started, end - started])
    setattr(owner, path[-1], wrapper)
    order.append(name)

from costor.cli.main import verb_of
verb = verb_of(arguments)
timed("costor.util.argon2", "_argon2id", "argon2id derivation (util)", interval=True)
try:
    from costor.cli import early
except ImportError:  # a CoStor from before it
    early = None
if early is not None:
    early.derive_ahead(verb, arguments)  # as cli/main.py does, before the imports
for module in modules:
    importlib.import_module(module)
imported = time.perf_counter()
for module, attribute, name, interval in [
    ("costor.util.argon2", "derive", "waiting for the key (util)", False),
    ("costor.store.crypto", "_derive", "key derivation in the pool's opening", True),
    ("costor.ops.context", "Context.open_pool", "opening the pool (key, identity, state)", False),
    ("costor.ops.context", "Context.load_index", "index loading", False),
    ("costor.ops.backup.pull", "Connection._start", "SSH connect + helper start (thread)", True),
    ("costor.ops.backup.pull", "_start", "HELLO, parent frames, reply", False),
    ("costor.ops.backup.pull", "read_walk", "walk: host walks, server takes entries", False),
    ("costor.ops.backup.pull", "fetch_missing", "fetches after the walk (deltas, whole)", False),
    ("costor.store.backup.walk", "Archiver.run", "local backup: walk and file workers, all", False),
    ("costor.store.backup.walk", "Archiver._read_file", "of which reading files: read, chunk, id, seal, write (workers)", False),
    ("costor.store.restore.directory", "Restorer._restore_items", "restore: walk and file workers, all", False),
    ("costor.store.restore.directory", "Restorer._write_content", "of which files' content: blob reads, writes (workers)", False),
    ("costor.protocol", "inflate", "inflate (host's zlib)", False),
    ("costor.protocol", "ContentDigest.update", "content digest check (BLAKE2b)", False),
    ("costor.store.pack", "BlobCodec.blob_id", "chunk ids (keyed BLAKE3)", False),
    ("costor.store.pack", "BlobCodec.seal", "compress + encrypt (zstd, AEAD)", False),
    ("costor.store.crypto", "Sealer.seal", "of which encrypt (AEAD)", False),
    ("costor.store.pack", "BlobCodec.open", "blob decrypt + decompress + id check", False),
    ("costor.store.backends.local", "LocalBackend.put", "object writes (I/O)", False),
    ("costor.store.backends.local", "LocalBackend.get_range", "object reads (I/O)", False),
    ("costor.ops.context", "Context.record_snapshot", "recording the snapshot in the state", False),
    ("costor.ops.restore.snapshots", "list_snapshots", "listing snapshots", False),
]:
    timed(module, attribute, name, interval)
try:
    from costor.transport.ssh import HelperProcess
    receive = HelperProcess.recv
    def recv(self, *args, **kwargs):
        kind, payload = receive(self, *args, **kwargs)
        if kind == b"Z":  # WALK_DONE: the helper's counters and seconds
            host.update(json.loads(payload))
        return kind, payload
    HelperProcess.recv = recv
except ImportError:
    pass
from costor.cli.main import main
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    sys.argv = ["costor", *arguments]
    code = main()  # as the costor script calls it: the process's own command, so its
    # ending is the real one (cli/main.py's _ending: the heap collected once and frozen)
ended = time.perf_counter()
with open(os.environ["COSTOR_BREAKDOWN_OUT"], "w") as out:
    json.dump({"code": code, "imports": imported - started, "total": ended - started,
               "spent": spent, "order": order, "intervals": intervals, "host": host,
               "stdout": printed.getvalue()}, out)
"""

SNAPSHOTS_MODULES = "costor.ops.restore.snapshots"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compile_bytecode() -> None:
    """CoStor's modules compiled once (``pip install`` does it; an editable checkout
    under PYTHONDONTWRITEBYTECODE never does)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "costor")], check=True)


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed:\n{result.stderr.decode()[-2000:]}")
    return elapsed


def rounds(
    commands: dict[str, list[str]], env: dict[str, str], cwd: Path, count: int
) -> dict[str, list[float]]:
    """Each command once per round, the order turned by one each round."""
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(count):
        turn = number % len(names)
        for name in names[turn:] + names[:turn]:
            times[name].append(run_timed(commands[name], env, cwd))
    return times


def breakdown(
    modules: str, arguments: list[str], env: dict[str, str], cwd: Path, out: Path
) -> dict[str, Any]:
    """One ``costor`` process through :data:`DRIVER`; its wall time is added as
    ``wall`` (the interpreter's start and exit are ``wall - total``)."""
    env = {**env, "COSTOR_BREAKDOWN_OUT": str(out)}
    wall = run_timed([sys.executable, "-c", DRIVER, modules, *arguments], env, cwd)
    document: dict[str, Any] = json.loads(out.read_text())
    document["wall"] = wall
    return document


def breakdown_lines(document: dict[str, Any], floor: float | None = None) -> list[str]:
    """A breakdown as Markdown lines (a table of parts, then the threads' intervals)."""
    total, imports = document["total"], document["imports"]
    lines = [
        "| part | seconds | calls | threads |",
        "|---|---|---|---|",
        f"| the whole process (wall) | {document['wall']:.3f} | | |",
    ]
    if floor is not None:
        lines.append(f"| interpreter start and exit (`python -c pass`) | {floor:.3f} | | |")
    lines.append(
        "| before and after the process's own code (interpreter start, exit) "
        f"| {document['wall'] - total:.3f} | | |"
    )
    lines.append(f"| imports of the verb's use case | {imports:.3f} | | MainThread |")
    lines.append(f"| from the imports to the end | {total - imports:.3f} | | MainThread |")
    order = {name: number for number, name in enumerate(document.get("order") or [])}
    spent = sorted(document["spent"].items(), key=lambda item: order.get(item[0], len(order)))
    for name, (seconds, calls, threads) in spent:
        lines.append(f"| {name} | {seconds:.3f} | {calls} | {', '.join(threads)} |")
    host = document.get("host") or {}
    for name, seconds in (host.get("seconds") or {}).items():
        lines.append(f"| host helper: {name} | {seconds:.3f} | | (on the host) |")
    intervals = document.get("intervals") or []
    if intervals:
        lines += ["", "Threads (seconds from the start of the process's own code):", ""]
        for name, thread, begin, end in intervals:
            lines.append(f"- {name} on {thread}: {begin:.3f} → {end:.3f}")
    return lines


def describe(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}–{max(values) * 1000:.0f})"


def make_data(work: Path, snapshots: int, env: dict[str, str]) -> None:
    tree = work / "tree"
    tree.mkdir()
    for index in range(200):
        (tree / f"file-{index:03d}.txt").write_text(f"line {index}\n" * (20 + index))
    (work / "inventory.toml").write_text(
        "\n".join(
            [
                "[costor]",
                'state_dir = ".costor"',
                "",
                "[sites.bench]",
                "",
                "[pools.bench]",
                'site = "bench"',
                'backend = "local"',
                'path = "pool"',
                'passphrase = { env = "STARTUP_PASSPHRASE" }',
                "",
                "[clients.tree]",
                'site = "bench"',
                'pool = "bench"',
                'transport = "local"',
                f'paths = ["{tree}"]',
                "",
            ]
        )
    )
    costor = [sys.executable, "-m", "costor"]
    run_timed([*costor, "apply", "--auto-approve"], env, work)
    run_timed(["restic", "init", "-q"], env, work)
    for number in range(snapshots):
        with open(tree / "file-000.txt", "a") as handle:
            handle.write(f"change {number}\n")
        run_timed([*costor, "backup", "tree"], env, work)
        run_timed(["restic", "backup", "-q", str(tree)], env, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("needs restic: apt-get install restic")
    work = args.work or Path(tempfile.mkdtemp(prefix="costor-startup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STARTUP_PASSPHRASE": PASSPHRASE,
        "RESTIC_PASSWORD": PASSPHRASE,
        "RESTIC_REPOSITORY": str(work / "restic"),
        "COSTOR_INVENTORY": str(work / "inventory.toml"),
    }
    env.pop("COSTOR_SERVER", None)
    compile_bytecode()
    if not (work / "pool").exists():
        log(f"making {args.snapshots} snapshots with each tool in {work}")
        make_data(work, args.snapshots, env)
    python = sys.executable
    commands = {
        "python -S -c pass": [python, "-S", "-c", "pass"],
        "python -c pass": [python, "-c", "pass"],
        "costor --version": [python, "-m", "costor", "--version"],
        "restic version": ["restic", "version"],
        "costor snapshots --json": [python, "-m", "costor", "snapshots", "--json"],
        "restic snapshots --json": ["restic", "snapshots", "--json"],
    }
    log(f"{args.rounds} rounds of {len(commands)} commands")
    times = rounds(commands, env, work, args.rounds)
    log("one costor snapshots --json through the breakdown driver")
    floor = statistics.median(times["python -c pass"])
    details = breakdown(SNAPSHOTS_MODULES, ["snapshots", "--json"], env, work, work / "bd.json")
    restic_version = subprocess.run(["restic", "version"], capture_output=True, text=True)
    lines = [
        "# Start-up: a new `costor` process against restic's",
        "",
        f"- date: {_dt.date.today().isoformat()}; {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"{restic_version.stdout.strip()}",
        f"- data: a pool and a restic repository with {args.snapshots} snapshots each of "
        "the same 200-file tree (one file changed before each backup)",
        f"- command: `python bench/startup.py --rounds {args.rounds}`; {args.rounds} rounds, "
        "each command once per round in turn; medians (min–max); bytecode compiled first",
        "",
        "| command | time |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {describe(values)} |" for name, values in times.items()]
    lines += ["", "Where one `costor snapshots --json` spends its time:", ""]
    lines += breakdown_lines(details, floor)
    lines += [
        "",
        "restic derives its key (scrypt) in each `snapshots` too; CoStor derives argon2id "
        "(64 MiB, 3 passes), started on another core before the imports "
        "(costor/cli/early.py) when the inventory on disk names the pool.",
        "",
    ]
    report = "\n".join(lines)
    (work / "results.json").write_text(json.dumps({"times": times, "breakdown": details}))
    if args.out:
        args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
