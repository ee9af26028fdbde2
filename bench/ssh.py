#!/usr/bin/env python3
"""SSH pull benchmark: CoStor vs ``rsync -a`` over SSH, same sshd, same data, one run.

    python bench/ssh.py --repeat 3 --out docs/benchmarks-ssh.md
    python bench/ssh.py --quick --out /tmp/ssh.md          # a smoke run (~1 min)

Both tools reach a real OpenSSH sshd started on a loopback port for this run, through
one counting TCP relay in front of it, so "bytes over the wire" is measured the same
way for both (TCP payload, both directions: SSH framing and encryption included), with
the same cipher (aes128-gcm@openssh.com). Both ends run on this machine and share its
cores. Steps, each on fresh destinations, medians of ``--repeat`` runs:

1. **first pull** of a generated tree (bench/run.py's generator: text and random files,
   four large files);
2. **pull after 1 % of the files changed** (a region rewritten and bytes appended, the
   same files for both tools);
3. **pull of a large file with 1 % of its 1 MiB blocks changed** in place;
4. **a second host with the same tree** (CoStor only: rsync has no cross-host view):
   bytes saved by cross-client dedup.

rsync writes into a directory (``rsync -a --delete``, its quick check: size and mtime);
CoStor backs up into an encrypted, deduplicated pool (zstd). Raw numbers go to
``WORK/results.json``.

CoStor is run three ways (a long-lived process, a ``costor serve`` job, and ``costor
backup`` as a new process per pull, the way a cron job or a person runs it), with its
bytecode compiled first as ``pip install`` does. In the first run, one more first pull
and one more 1 %-changed pull go through bench/startup.py's timing driver: the table's
breakdown of where a new ``costor backup`` process spends its time (imports, key
derivation, index loading, connection, walk, fetches, the server's inflate, digest,
chunk ids, compression, encryption, writes, and the host helper's reading, hashing,
zlib and waiting writes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as local_bench  # noqa: E402  (the generator of bench/run.py)
import startup  # noqa: E402  (the breakdown driver and the bytecode compilation)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CIPHER = "aes128-gcm@openssh.com"
# Both tools log in as this user (created if missing, shell /bin/sh), as docs/ssh.md
# recommends: a dedicated account, not root, whose shell starts in milliseconds (root's
# login here sources pyenv, ~0.23 s a session, which both tools would pay).
USER = "costorbench"


def ensure_user() -> None:
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "-m", "-s", "/bin/sh", USER], check=True)
    subprocess.run(["usermod", "-p", "*", USER], check=True)  # key logins only


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the server and the relay ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Relay:
    """127.0.0.1:port -> sshd, counting every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.bytes = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            # No Nagle: the relay must not add the 40 ms stalls of Nagle + delayed ACK
            # to every small request/response exchange (both tools' own sockets set it).
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(1 << 20)
                if not data:
                    break
                sink.sendall(data)
                with self.lock:
                    self.bytes += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> int:
        with self.lock:
            count, self.bytes = self.bytes, 0
        return count


def start_sshd(work: Path) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    keys = work / "keys"
    keys.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {keys / 'host_key'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                f"PidFile {keys / 'sshd.pid'}",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    keys.chmod(0o755)
    (keys / "authorized_keys").chmod(0o644)
    process = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
        stderr=open(work / "sshd.log", "ab"),  # noqa: SIM115  (sshd keeps it)
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, port, keys / "client_key", keys / "host_key.pub"


# --- the tools -------------------------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


class Rsync:
    def __init__(self, port: int, key: Path) -> None:
        self.ssh = (
            f"ssh -p {port} -i {key} -c {CIPHER} -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o Compression=no"
        )

    def pull(self, source: Path, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        return timed(
            ["rsync", "-a", "--delete", "-e", self.ssh, f"{USER}@127.0.0.1:{source}/", f"{dest}/"]
        )


WORKER = """
import json, sys, time
from costor.ops.backup.run import run_backup
from costor.ops.context import Context
ctx = Context(sys.argv[1], keep_indexes=True)  # as `costor serve` does
for line in sys.stdin:
    start = time.perf_counter()
    outcome = run_backup(ctx, line.strip())
    print(json.dumps({"elapsed": time.perf_counter() - start, **outcome.to_json()}), flush=True)
"""


# The modules `costor backup` of an SSH client imports for its use case (the breakdown's
# "imports" line): those of the verb and of the pull.
BACKUP_MODULES = "costor.ops.backup.run,costor.ops.backup.pull"


class Costor:
    """How CoStor is run: ``cli``, ``costor backup`` as a new process each time;
    ``inproc``, one long-lived process backing up on request (imports done once, each
    pool's key derived once); ``serve``, a job queued to a running ``costor serve``
    (timed from its claim to its recorded outcome, as the job table says); ``driver``,
    ``costor backup`` as a new process through bench/startup.py's breakdown driver (its
    times are not in the table: they are the breakdown under it)."""

    def __init__(self, work: Path, port: int, key: Path, *, mode: str = "cli") -> None:
        self.work = work
        self.port = port
        self.key = key
        self.mode = mode
        self.worker: subprocess.Popen[str] | None = None
        self.breakdowns: list[dict[str, Any]] = []  # driver: one per backup
        self.env = {
            **os.environ,
            "BENCH_PASSPHRASE": "benchmark passphrase",
            "PYTHONPATH": str(ROOT),
        }

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait()
            self.worker = None

    def setup(self, clients: dict[str, Path]) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        lines = ["[costor]", 'state_dir = ".costor"', "", "[sites.bench]", "", "[pools.bench]"]
        lines += ['site = "bench"', 'backend = "local"', 'path = "pool"']
        lines += ['passphrase = { env = "BENCH_PASSPHRASE" }', ""]
        for name, path in clients.items():
            lines += [f"[clients.{name}]", 'site = "bench"', 'pool = "bench"', 'transport = "ssh"']
            lines += ['host = "127.0.0.1"']
            lines += [
                f'ssh = {{ user = "{USER}", port = {self.port}, key = {{ file = "{self.key}" }}, python = "/usr/bin/python3" }}'
            ]
            lines += [f'paths = ["{path}"]', ""]
        (self.work / "inventory.toml").write_text("\n".join(lines))
        timed(self.cmd("apply", "--auto-approve"), env=self.env)

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "costor", *args, "-c", str(self.work / "inventory.toml")]

    def backup(self, client: str) -> tuple[float, dict[str, Any]]:
        if self.mode == "serve":
            return self._serve_job(client)
        if self.mode == "driver":
            arguments = ["backup", client, "--json", "-c", str(self.work / "inventory.toml")]
            out = self.work / f"breakdown-{len(self.breakdowns)}.json"
            document = startup.breakdown(BACKUP_MODULES, arguments, self.env, self.work, out)
            self.breakdowns.append(document)
            return document["wall"], json.loads(document["stdout"])
        if self.mode == "inproc":
            if self.worker is None:
                self.worker = subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(self.work / "inventory.toml")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=self.env,
                )
            assert self.worker.stdin is not None and self.worker.stdout is not None
            self.worker.stdin.write(client + "\n")
            self.worker.stdin.flush()
            line = self.worker.stdout.readline()
            if not line:
                raise SystemExit("the in-process CoStor worker failed")
            document = json.loads(line)
            return document["elapsed"], document
        start = time.perf_counter()
        result = subprocess.run(
            self.cmd("backup", client, "--json"), env=self.env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"costor backup failed:\n{result.stderr}")
        return elapsed, json.loads(result.stdout)

    def _serve_job(self, client: str) -> tuple[float, dict[str, Any]]:
        import sqlite3

        if self.worker is None:
            self.worker = subprocess.Popen(
                self.cmd("serve", "--workers", "1"),
                stdout=subprocess.DEVNULL,
                stderr=open(self.work / "serve.log", "ab"),  # noqa: SIM115  (serve keeps it)
                env=self.env,
                text=True,
            )
        added = subprocess.run(
            self.cmd("jobs", "add", "backup", client, "--json"),
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = json.loads(added.stdout)["id"]
        query = "SELECT state, started_at, finished_at, result, error FROM jobs WHERE id = ?"
        while True:
            with sqlite3.connect(self.work / ".costor" / "state.db") as db:
                state, started, finished, result, error = db.execute(query, (job_id,)).fetchone()
            if state in ("succeeded", "failed", "interrupted"):
                break
            if self.worker.poll() is not None:
                raise SystemExit("costor serve stopped; see serve.log")
            time.sleep(0.05)
        if state != "succeeded":
            raise SystemExit(f"the serve job failed: {error}")
        elapsed = (
            _dt.datetime.fromisoformat(finished) - _dt.datetime.fromisoformat(started)
        ).total_seconds()
        return elapsed, json.loads(result)


# --- data --------------------------------------------------------------------------------------


def change_files(root: Path, fraction: float, seed: int) -> int:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name != "large")
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, int(len(files) * fraction)))
    for path in chosen:
        data = bytearray(path.read_bytes())
        start = rng.randrange(max(1, len(data) - 64))
        data[start : start + 64] = rng.randbytes(64)
        data += rng.randbytes(100)
        path.write_bytes(bytes(data))
    return len(chosen)


def change_blocks(path: Path, fraction: float, seed: int) -> int:
    size = path.stat().st_size
    blocks = size // MIB
    rng = random.Random(seed)
    chosen = rng.sample(range(blocks), max(1, int(blocks * fraction)))
    with open(path, "r+b") as handle:
        for index in chosen:
            handle.seek(index * MIB + rng.randrange(MIB - 4096))
            handle.write(rng.randbytes(4096))
    return len(chosen)


# --- one run ---------------------------------------------------------------------------------


def one_run(
    work: Path,
    data: Path,
    image: Path,
    relay: Relay,
    port: int,
    key: Path,
    seed: int,
    *,
    breakdown: bool = False,
) -> dict[str, Any]:
    rsync = Rsync(relay.port, key)
    tools = {
        "costor": Costor(work / "costor", relay.port, key),
        "inproc": Costor(work / "costor-inproc", relay.port, key, mode="inproc"),
        "serve": Costor(work / "costor-serve", relay.port, key, mode="serve"),
    }
    # The breakdown's own pulls (first and 1 % changed), after the measured ones of each
    # step: a new `costor backup` process through the timing driver, into its own pool.
    driver = Costor(work / "costor-driver", relay.port, key, mode="driver") if breakdown else None
    results: dict[str, Any] = {}
    twin = work / "twin"
    shutil.rmtree(twin, ignore_errors=True)
    subprocess.run(["sync"])

    def costor_step(step: str, client: str) -> None:
        for name, tool in tools.items():
            relay.take()
            elapsed, doc = tool.backup(client)
            results[f"{name}_{step}"] = (
                elapsed,
                relay.take(),
                doc["bytes_transferred"],
                doc.get("files_deduplicated", 0),
            )

    # 1. first pull
    dest = work / "rsync-tree"
    shutil.rmtree(dest, ignore_errors=True)
    relay.take()
    results["rsync_first"] = (rsync.pull(data, dest), relay.take())
    for tool in tools.values():
        tool.setup({"tree": data, "image": image.parent, "twin": twin})
    costor_step("first", "tree")
    if driver is not None:
        driver.setup({"tree": data})
        driver.backup("tree")
    # 2. 1% of the files changed
    changed = change_files(data, 0.01, seed)
    subprocess.run(["sync"])
    relay.take()
    results["rsync_incremental"] = (rsync.pull(data, dest), relay.take())
    costor_step("incremental", "tree")
    results["files_changed"] = changed
    if driver is not None:
        driver.backup("tree")  # the same changes: its parent is the first pull
        results["breakdown"] = {"first": driver.breakdowns[0], "incremental": driver.breakdowns[1]}
        driver.stop()
    # 3. a large file, 1% of its blocks changed in place
    image_dest = work / "rsync-image"
    shutil.rmtree(image_dest, ignore_errors=True)
    rsync.pull(image.parent, image_dest)
    for tool in tools.values():
        tool.backup("image")
    blocks = change_blocks(image, 0.01, seed)
    subprocess.run(["sync"])
    relay.take()
    results["rsync_image"] = (rsync.pull(image.parent, image_dest), relay.take())
    costor_step("image", "image")
    results["blocks_changed"] = blocks
    # 4. a second host with the same tree
    shutil.copytree(data, twin)
    subprocess.run(["sync"])
    costor_step("twin", "twin")
    shutil.rmtree(twin, ignore_errors=True)
    for tool in tools.values():
        tool.stop()
    return results


def render(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    def med(key: str, index: int) -> float:
        return statistics.median(run[key][index] for run in runs)

    def mib(count: float) -> str:
        return f"{count / MIB:.2f} MiB" if count >= MIB else f"{count / 1024:.1f} KiB"

    def spread(key: str) -> str:
        values = [run[key][0] for run in runs]
        return f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""

    lines = [
        "# SSH pull: CoStor vs rsync over the same sshd",
        "",
        f"- date: {info['date']}; machine: {info['cpu']}, {info['cores']} cores, {info['os']}; "
        f"Python {info['python']}; {info['rsync']}; OpenSSH {info['sshd']}; load average "
        f"(1 min) {' → '.join(f'{load:.1f}' for load in info.get('load', []))} across the run "
        "(the machine is shared: both tools are slowed alike in each step)",
        f"- data: bench/run.py's generated tree ({info['files']} files, {mib(info['bytes'])}); "
        f"a {mib(info['image'])} image of random bytes",
        f"- command: `python bench/ssh.py --repeat {len(runs)} --out …`; medians of "
        f"{len(runs)} runs (min–max in brackets); both ends on this machine; bytes = TCP "
        f"payload through one counting relay, both directions, cipher {CIPHER}; both log in "
        "as a dedicated user with /bin/sh",
        "",
        "| step | rsync -a | CoStor, server process | CoStor, `costor serve` job "
        "| CoStor, `costor backup` | `costor backup` / rsync | rsync bytes | CoStor bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step, name in (
        ("first pull", "first"),
        (f"after {runs[0]['files_changed']} files (1 %) changed", "incremental"),
        (f"image, {runs[0]['blocks_changed']} blocks (1 %) changed", "image"),
    ):
        lines.append(
            f"| {step} | {med('rsync_' + name, 0):.2f} s{spread('rsync_' + name)} | "
            f"{med('inproc_' + name, 0):.2f} s{spread('inproc_' + name)} | "
            f"{med('serve_' + name, 0):.2f} s{spread('serve_' + name)} | "
            f"{med('costor_' + name, 0):.2f} s{spread('costor_' + name)} | "
            f"{med('costor_' + name, 0) / med('rsync_' + name, 0):.2f}× | "
            f"{mib(med('rsync_' + name, 1))} | {mib(med('costor_' + name, 1))} |"
        )
    twin = med("costor_twin", 1)
    first = med("costor_first", 1)
    lines += [
        "",
        "- *server process*: one long-lived process doing the pulls (Python's imports done "
        "and each pool's key derived once): the cost of the pull itself. "
        "*`costor serve` job*: a backup queued (`costor jobs add`) to a running daemon "
        "(its default 1 s tick, so it claims the job once that command has exited), which "
        "forks each job from itself (imports done, keys derived and indexes loaded at its "
        "start), timed from the claim to "
        "the recorded outcome (the job table's started_at and finished_at): what a "
        "scheduled backup costs. *`costor backup`*: a new process per pull, paying its "
        "imports and its key derivation each time (where its time goes: below). "
        "Each stores into its own pool; bytes are the same for all (the CLI's are shown).",
        f"- Cross-host dedup: a second host with the same tree took {med('inproc_twin', 0):.2f} s "
        f"(server process) and {mib(twin)} over the wire, against {mib(first)} for the first "
        f"host ({100 * (1 - twin / first):.1f} % saved; {runs[0]['costor_twin'][3]} files "
        "recognised by their digest, not sent). rsync has no view across hosts.",
        "",
        "What differs: rsync writes a plain copy; CoStor stores deduplicated, zstd-compressed, "
        "encrypted snapshots and keeps every version. CoStor's helper compresses new data "
        "with zlib level 1 (not data whose first KiB looks random); rsync here runs "
        "without `-z` (its default).",
        "",
    ]
    breakdown = runs[0].get("breakdown")
    if breakdown:
        lines += [
            "## Where a new `costor backup` process spends its time",
            "",
            "One more first pull and one more pull after the same 1 % changed, of the first "
            "run, each a new `costor backup` process through bench/startup.py's driver "
            "(into a pool of its own): the imports of the verb's use case, then the time "
            "inside each named part, summed over its calls and threads (a thread's time "
            "overlaps the main thread's; the server's pipeline runs on several threads), "
            "and the host helper's own seconds (WALK_DONE): reading and hashing files, "
            "zlib, and writes that waited for the connection.",
        ]
        for step, title in (("first", "First pull"), ("incremental", "After 1 % changed")):
            lines += ["", f"### {title}", ""]
            lines += startup.breakdown_lines(breakdown[step], info.get("python_floor"))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if shutil.which("rsync") is None or not os.path.exists("/usr/sbin/sshd"):
        raise SystemExit("needs rsync and openssh-server: apt-get install rsync openssh-server")
    work = args.work or Path(tempfile.mkdtemp(prefix="costor-ssh-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # the SSH user reads the data below it
    ensure_user()
    startup.compile_bytecode()
    loads = [os.getloadavg()[0]]
    floor = statistics.median(
        startup.run_timed([sys.executable, "-c", "pass"], dict(os.environ), work) for _ in range(9)
    )
    process, port, key, _host_pub = start_sshd(work)
    relay = Relay(port)
    try:
        runs = []
        for repeat in range(args.repeat):
            log(f"run {repeat + 1} of {args.repeat}: generating data")
            data = work / "data"
            params = local_bench.generated_params(args.quick)
            local_bench.generate(data, params)
            subprocess.run(["chmod", "-R", "a+rX", str(data)], check=True)
            image = work / "image" / "disk.img"
            shutil.rmtree(image.parent, ignore_errors=True)
            image.parent.mkdir(parents=True)
            rng = random.Random(7 + repeat)
            with open(image, "wb") as handle:
                for _ in range(64 if args.quick else 512):
                    handle.write(rng.randbytes(MIB))
            image.chmod(0o644)
            info_files = sum(1 for p in data.rglob("*") if p.is_file())
            info_bytes = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
            runs.append(
                one_run(
                    work / "run",
                    data,
                    image,
                    relay,
                    port,
                    key,
                    seed=100 + repeat,
                    breakdown=repeat == 0,
                )
            )
            shown = {name: value for name, value in runs[-1].items() if name != "breakdown"}
            log(f"run {repeat + 1}: {json.dumps(shown)}")
        info = {
            "date": _dt.date.today().isoformat(),
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            ),
            "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "rsync": subprocess.run(
                ["rsync", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
            "sshd": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
            "files": info_files,
            "bytes": info_bytes,
            "image": image.stat().st_size,
            "python_floor": floor,
            "load": [loads[0], os.getloadavg()[0]],
        }
        (work / "results.json").write_text(json.dumps({"info": info, "runs": runs}, indent=1))
        report = render(runs, info)
        if args.out:
            args.out.write_text(report)
        print(report)
    finally:
        process.terminate()


if __name__ == "__main__":
    main()
