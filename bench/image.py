#!/usr/bin/env python3
"""Image benchmark: CoStor's image backup vs ``rsync --inplace --no-whole-file`` and
restic, one disk image with 1 % of its 4 KiB blocks rewritten, same run.

    python bench/image.py --size 4GiB --repeat 3 --out docs/benchmarks-image.md
    python bench/image.py --size 512MiB --repeat 1 --out /tmp/image.md   # a smoke run

The image is an ext4 filesystem image file (``mkfs.ext4 -d``) filled to 60 % with
copies of this machine's /usr files (sorted walk, regular files; the walk starts again
when /usr is smaller), the rest free space (holes in the file). Then 1 % of its 4 KiB
blocks are rewritten with random bytes at random offsets (seeded). Steps, on fresh
destinations each run, medians of ``--repeat`` runs:

1. **first backup** of the image;
2. **incremental** after the change (CoStor and rsync: bytes over the wire);
3. **restore** of the changed image (CoStor vs restic), checked byte-identical.

CoStor and rsync reach a real OpenSSH sshd started on a loopback port for this run
(bench/ssh.py's: same user, cipher and counting relay, so bytes are TCP payload in
both directions). CoStor pulls the image as ``images = [...]`` of an SSH client,
timed in one long-lived process (imports done and the pool's key derived once).
rsync updates a copy of the previous version in place. restic has no agentless pull:
it runs on this machine reading the file (``restic backup FILE``, a local repository),
so it has no wire bytes; its "added" bytes are reported instead. Raw numbers go to
``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssh as ssh_bench  # noqa: E402  (bench/ssh.py: the sshd, the relay, CoStor's runner)

MIB = 1024 * 1024
BLOCK = 4096
FILL = 0.6  # of the image's size, in /usr files
CHANGED = 0.01  # of its 4 KiB blocks
RESTIC_PASSWORD = "benchmark passphrase"
log = ssh_bench.log


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]i?B?)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (like 4GiB or 512MiB)")
    unit = (match.group(2) or "").upper()[:1]
    size = int(match.group(1)) * 1024 ** " KMGT".index(unit or " ")
    if size < 64 * MIB or size % BLOCK:
        raise argparse.ArgumentTypeError("the image is at least 64MiB, in 4 KiB blocks")
    return size


def human(count: float) -> str:
    if count >= 1024 * MIB:
        return f"{count / 1024 / MIB:.2f} GiB"
    return f"{count / MIB:.2f} MiB" if count >= MIB else f"{count / 1024:.1f} KiB"


# --- the image ---------------------------------------------------------------------------


def usr_files() -> list[Path]:
    found = []
    for top, dirs, files in os.walk("/usr"):
        dirs.sort()
        for name in sorted(files):
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def make_image(image: Path, size: int, staging: Path) -> int:
    """An ext4 image of ``size`` holding /usr files up to FILL of it; their bytes."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = usr_files()
    target, copied, index = int(size * FILL), 0, 0
    while copied < target and files:
        source = files[index % len(files)]
        size_of = source.stat().st_size
        if copied + size_of <= target:
            relative = source.relative_to("/usr")
            dest = staging / f"copy{index // len(files)}" / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            copied += size_of
        elif size_of < 4096:
            break
        index += 1
    image.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(staging), str(image), f"{size // 1024}k"],
        check=True,
    )
    shutil.rmtree(staging)
    image.chmod(0o644)
    return copied


def change_blocks(image: Path, seed: int) -> int:
    blocks = image.stat().st_size // BLOCK
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(blocks), max(1, int(blocks * CHANGED))))
    with open(image, "r+b") as handle:
        for index in chosen:
            handle.seek(index * BLOCK)
            handle.write(rng.randbytes(BLOCK))
    return len(chosen)


def digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


def drop_caches() -> None:
    """The page cache emptied, so that every tool reads the image from the disk."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root, or a container that forbids it: said in the report


# --- the tools ---------------------------------------------------------------------------


class Costor(ssh_bench.Costor):
    """bench/ssh.py's runner (mode "inproc") with one client, "vm", whose image is read."""

    chunk_avg_kib = 64  # an image pool's chunks (docs/images.md): --chunk-avg-kib

    def setup_image(self, image: Path) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        ssh = (
            f'ssh = {{ user = "{ssh_bench.USER}", port = {self.port}, '
            f'key = {{ file = "{self.key}" }}, python = "/usr/bin/python3" }}'
        )
        lines = [
            "[costor]",
            'state_dir = ".costor"',
            "",
            "[sites.bench]",
            "",
            "[pools.bench]",
            'site = "bench"',
            'backend = "local"',
            'path = "pool"',
            f"chunk_avg_kib = {self.chunk_avg_kib}",
            'passphrase = { env = "BENCH_PASSPHRASE" }',
            "",
            "[clients.vm]",
            'site = "bench"',
            'pool = "bench"',
            'transport = "ssh"',
            'host = "127.0.0.1"',
            ssh,
            f'images = ["{image}"]',
            "",
        ]
        (self.work / "inventory.toml").write_text("\n".join(lines))
        ssh_bench.timed(self.cmd("apply", "--auto-approve"), env=self.env)

    def image_facts(self, image: Path) -> dict[str, Any]:
        listed = subprocess.run(
            self.cmd("ls", "vm:latest", str(image), "--json"),
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        entries = json.loads(listed.stdout)
        return next((e.get("image") or {} for e in entries if e.get("path") == str(image)), {})

    def restore(self, image: Path, target: Path) -> tuple[float, Path]:
        shutil.rmtree(target, ignore_errors=True)
        elapsed = ssh_bench.timed(
            self.cmd("restore", "vm:latest", str(image), "--target", str(target)), env=self.env
        )
        return elapsed, restored_file(target, image)


def restored_file(target: Path, image: Path) -> Path:
    """Where a restore under ``target`` put the image (at its name or its whole path)."""
    found = [path for path in target.rglob(image.name) if path.is_file()]
    if len(found) != 1:
        raise SystemExit(f"the restore under {target} holds {len(found)} files {image.name}")
    return found[0]


class Restic:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(repo),
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
        }
        shutil.rmtree(repo, ignore_errors=True)
        ssh_bench.timed(["restic", "init"], env=self.env)

    def backup(self, image: Path) -> tuple[float, int]:
        start = time.perf_counter()
        result = subprocess.run(
            ["restic", "backup", "--json", str(image)], env=self.env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"restic backup failed:\n{result.stderr}")
        summary = [
            json.loads(line)
            for line in result.stdout.splitlines()
            if line.startswith("{") and '"summary"' in line
        ]
        return elapsed, int(summary[-1].get("data_added", 0)) if summary else 0

    def restore(self, image: Path, target: Path) -> tuple[float, Path]:
        shutil.rmtree(target, ignore_errors=True)
        elapsed = ssh_bench.timed(
            ["restic", "restore", "latest", "--target", str(target)], env=self.env
        )
        return elapsed, restored_file(target, image)


def rsync_pull(rsync: ssh_bench.Rsync, image: Path, dest: Path) -> float:
    return ssh_bench.timed(
        [
            "rsync",
            "--inplace",
            "--no-whole-file",
            "-e",
            rsync.ssh,
            f"{ssh_bench.USER}@127.0.0.1:{image}",
            str(dest),
        ]
    )


# --- one run -----------------------------------------------------------------------------


def one_run(
    work: Path, image: Path, relay: ssh_bench.Relay, key: Path, seed: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    costor = Costor(work / "costor", relay.port, key, mode="inproc")
    costor.setup_image(image)
    restic = Restic(work / "restic-repo")
    rsync = ssh_bench.Rsync(relay.port, key)
    copy = work / "rsync-copy.img"
    copy.unlink(missing_ok=True)

    # 1. the first backup of the image
    drop_caches()
    relay.take()
    elapsed, doc = costor.backup("vm")
    results["costor_first"] = (elapsed, relay.take(), doc["bytes_transferred"])
    drop_caches()
    relay.take()
    results["rsync_first"] = (rsync_pull(rsync, image, copy), relay.take())
    drop_caches()
    results["restic_first"] = restic.backup(image)

    # 2. 1 % of the 4 KiB blocks rewritten, then the incrementals
    results["blocks_changed"] = change_blocks(image, seed)
    source_digest = digest(image)
    drop_caches()
    relay.take()
    elapsed, doc = costor.backup("vm")
    results["costor_incremental"] = (elapsed, relay.take(), doc["bytes_transferred"])
    results["costor_image"] = costor.image_facts(image)
    drop_caches()
    relay.take()
    results["rsync_incremental"] = (rsync_pull(rsync, image, copy), relay.take())
    if digest(copy) != source_digest:
        raise SystemExit("rsync's copy differs from the image")
    drop_caches()
    results["restic_incremental"] = restic.backup(image)
    costor.stop()

    # 3. restores of the changed image, each checked against it
    for name, tool in (("costor", costor), ("restic", restic)):
        drop_caches()
        target = work / f"restore-{name}"
        elapsed, restored = tool.restore(image, target)
        if digest(restored) != source_digest:
            raise SystemExit(f"{name}'s restored image differs from the image")
        results[f"{name}_restore"] = (elapsed, restored.stat().st_blocks * 512)
        shutil.rmtree(target)
    results["pool_bytes"] = du(work / "costor" / "pool")
    results["restic_repo_bytes"] = du(work / "restic-repo")
    copy.unlink()
    return results


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# --- the report --------------------------------------------------------------------------


def render(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    def med(key: str, index: int) -> float:
        return statistics.median(run[key][index] for run in runs)

    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    def secs(key: str) -> str:
        values = [run[key][0] for run in runs]
        spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f} s{spread}"

    facts = runs[0].get("costor_image") or {}
    block = facts.get("block_size")
    lines = [
        "# Image backup: CoStor vs rsync and restic",
        "",
        f"- command: `python bench/image.py --size {info['size_arg']} --repeat {len(runs)} "
        "--out docs/benchmarks-image.md` (run as root; generated by the script)",
        f"- date: {info['date']}; machine: {info['cpu']}, {info['cores']} cores, {info['os']}; "
        f"Python {info['python']}; {info['rsync']}; {info['restic']}; OpenSSH {info['sshd']}",
        f"- image: {human(info['size'])} ext4 filesystem image file (`mkfs.ext4 -d`) holding "
        f"{human(info['filled'])} of copies of this machine's /usr files, the rest free "
        f"space; then {runs[0]['blocks_changed']} of its 4 KiB blocks (1 %) rewritten with "
        "random bytes at random offsets (seeded); page cache dropped before every step"
        + ("" if info["dropped"] else " (could not be dropped here: warm reads)"),
        (
            f"- medians of {len(runs)} runs (min–max in brackets)"
            if len(runs) > 1
            else "- one run (`--repeat 1`)"
        )
        + "; both ends on this machine; "
        "bytes = TCP payload through one counting relay in front of the sshd, both "
        f"directions, cipher {ssh_bench.CIPHER}",
        "",
        "| step | CoStor (SSH) | rsync (SSH) | restic (local) | CoStor bytes | rsync bytes "
        "| restic added |",
        "|---|---|---|---|---|---|---|",
        f"| first backup | {secs('costor_first')} | {secs('rsync_first')} | "
        f"{secs('restic_first')} | {human(med('costor_first', 1))} | "
        f"{human(med('rsync_first', 1))} | {human(med('restic_first', 1))} |",
        f"| incremental, 1 % of 4 KiB blocks changed | {secs('costor_incremental')} | "
        f"{secs('rsync_incremental')} | {secs('restic_incremental')} | "
        f"{human(med('costor_incremental', 1))} | {human(med('rsync_incremental', 1))} | "
        f"{human(med('restic_incremental', 1))} |",
        f"| restore of the changed image | {secs('costor_restore')} | — | "
        f"{secs('restic_restore')} | {human(med('costor_restore', 1))} on disk | | "
        f"{human(med('restic_restore', 1))} on disk |",
        "",
        "What each tool does here:",
        "",
        '- **CoStor**: an SSH client with `images = ["…/disk.img"]`, pulled by one '
        "long-lived process (imports done, the pool's key derived once) through its helper "
        "on the host: the first backup reads the image (holes skipped), cuts it into "
        "content-defined chunks and stores them deduplicated, zstd-compressed and "
        f"encrypted (a pool with `chunk_avg_kib = {Costor.chunk_avg_kib}`, as docs/images.md "
        "advises for images: smaller chunks keep a scattered change's new chunks few); "
        "the incremental hashes the image on the host in "
        f"{human(block) if block else '?'} blocks against the previous snapshot's block "
        f"list and sends only the blocks that differ (method `{facts.get('method', '?')}`). "
        "Restore: `costor restore vm:latest IMAGE --target DIR` (a new process: imports "
        'and the key derivation included), holes written back ("on disk": the restored '
        "file's allocated bytes).",
        "- **rsync**: `rsync --inplace --no-whole-file` of the image through the same sshd "
        "into a copy of the previous version (the first run: into nothing); its rolling "
        "checksum finds the changed blocks (block size about √size). It keeps one plain "
        "copy, no history, no encryption; its result is checked byte-identical.",
        "- **restic**: `restic backup IMAGE` on the same machine into a local repository "
        "(restic has no agentless pull, so it reads the file directly and has no wire "
        "bytes; \"added\" is its summary's data_added: the new chunks' bytes before "
        "compression; the repository's size below is after). It reads "
        "and chunks the whole image every time. Restore: `restic restore latest --target "
        "DIR`.",
        f"- Storage after both backups: CoStor's pool {human(median('pool_bytes'))}, "
        f"restic's repository {human(median('restic_repo_bytes'))}. "
        "Both restores are checked byte-identical to the changed image.",
        "",
    ]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The date, the machine and the tools' versions, for the report's header."""

    def said(*argv: str) -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        return (done.stdout or done.stderr).strip().splitlines()[0]

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.partition(":")[2].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "date": _dt.date.today().isoformat(),
        "cpu": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "rsync": said("rsync", "--version"),
        "restic": said("restic", "version").split(" compiled")[0],
        "sshd": said("ssh", "-V"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("4GiB"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--chunk-avg-kib",
        type=int,
        default=Costor.chunk_avg_kib,
        help="CoStor's pool chunk_avg_kib (default 64: the image pool docs/images.md advises)",
    )
    args = parser.parse_args()
    Costor.chunk_avg_kib = args.chunk_avg_kib
    size_arg = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--size"), "4GiB")
    for tool in ("rsync", "restic", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}: apt-get install rsync restic e2fsprogs")
    if not os.path.exists("/usr/sbin/sshd") or os.geteuid() != 0:
        raise SystemExit("needs openssh-server and root (a user for the SSH logins)")
    work = args.work or Path(tempfile.mkdtemp(prefix="costor-image-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the SSH user reads the image below it
    ssh_bench.ensure_user()
    sshd_dir = work / "sshd"
    shutil.rmtree(sshd_dir, ignore_errors=True)
    sshd_dir.mkdir()
    process, port, key, _host_pub = ssh_bench.start_sshd(sshd_dir)
    relay = ssh_bench.Relay(port)
    try:
        runs, filled = [], 0
        for repeat in range(args.repeat):
            image_dir = work / "image"
            image_dir.mkdir(exist_ok=True)
            image_dir.chmod(0o755)
            image = image_dir / "disk.img"
            log(f"run {repeat + 1} of {args.repeat}: making a {human(args.size)} image")
            filled = make_image(image, args.size, work / "staging")
            runs.append(one_run(work / "run", image, relay, key, seed=100 + repeat))
            log(f"run {repeat + 1}: {json.dumps(runs[-1])}")
        info = {
            **machine(),
            "size": args.size,
            "size_arg": size_arg,
            "filled": filled,
            "dropped": os.access("/proc/sys/vm/drop_caches", os.W_OK),
        }
        (work / "results.json").write_text(json.dumps({"info": info, "runs": runs}, indent=1))
        report = render(runs, info)
        if args.out:
            args.out.write_text(report)
        print(report)
    finally:
        process.terminate()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
