#!/usr/bin/env python3
"""Live job progress benchmark: does watching a job slow it down?

    python bench/sse.py --out docs/benchmarks-sse.md
    python bench/sse.py --quick --out /tmp/sse.md          # a smoke run (~1 min)

One client of ``--files`` files (1–64 KiB, random) is backed up by a job of a real
``costor serve`` on a loopback port, ``--repeats`` times with no watcher and as many
times with ``--watchers`` server-sent-event clients (``GET /api/v1/jobs/{id}/events``,
httpx, in this process) following the job from before it starts to its end; the runs
alternate (0, N, 0, N…) after one warm-up run that stores the data. Before each run
every file's time is moved on, so each backup reads and hashes all of it again (and
stores nothing new: the same work every time).

Measured: the job's own time (its ``duration_s``: started to finished, as the state
records it), median of the repeats; the watchers' event lag (the time a progress event
reached a watcher minus the ``updated_at`` the job's process stamped on it: the
flusher's write, the server's poll every 0.5 s and the stream), p50/p99 over every
watcher's events; whether every watcher saw the job's end; and the server's CPU time
per run (``/proc/PID/stat``), which the watchers add to. Each job is queued while the
site is in maintenance, the watchers connect, then the maintenance ends and the job
starts: every watcher follows the whole job.

Helpers (a process run, a free port) are bench/api.py's. Raw numbers go to
WORK/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx
from api import COSTOR, PASSPHRASE, USER_PASSWORD, free_port, percentiles, run


def generate(root: Path, files: int, rng: random.Random) -> int:
    """``files`` files of 1–64 KiB, 100 to a directory; their bytes in all."""
    size = 0
    for i in range(files):
        directory = root / f"d{i // 100:04d}"
        if i % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(1024, 64 * 1024))
        (directory / f"f{i:06d}.bin").write_bytes(data)
        size += len(data)
    return size


def touch_all(root: Path, when: float) -> None:
    """Every file's times moved to ``when``: the next backup reads them all again."""
    for directory, _dirs, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(directory, name), (when, when))


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
                "[groups.admins]",
                'roles = ["admin"]',
                "",
                "[users.bench]",
                'groups = ["admins"]',
                'password = { env = "BENCH_USER_PASSWORD" }',
                "",
                "[clients.large]",
                'site = "hq"',
                'pool = "main"',
                'transport = "local"',
                f"paths = [{json.dumps(str(tree))}]",
                "",
            ]
        )
    )
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def watch(
    base: str, token: str, job_id: int, connected: asyncio.Queue[None]
) -> dict[str, Any]:
    """One SSE client: the lag of each progress event, and whether it saw the end.
    ``connected`` hears of its first event (the queued job's state)."""
    lags: list[float] = []
    events = 0
    ended = False
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=base, timeout=600) as client,
        client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as response,
    ):
        if response.status_code != 200:
            raise SystemExit(f"events: {response.status_code} {await response.aread()!r}")
        kind, data = "", ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif not line and data:
                events += 1
                if events == 1:
                    connected.put_nowait(None)
                doc = json.loads(data)
                if kind == "progress":
                    stamped = _dt.datetime.fromisoformat(doc["updated_at"]).timestamp()
                    lags.append(time.time() - stamped)
                elif kind == "state" and doc["ended"]:
                    ended = True
                kind, data = "", ""
    return {"lags": lags, "events": events, "ended": ended}


async def one_job(base: str, token: str, server_pid: int, watchers: int) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=600
    ) as client:
        # Queued in maintenance, so every watcher is following it before it starts.
        await maintenance(client, on=True)
        queued = await client.post("/api/v1/clients/large/backup")
        if queued.status_code != 202:
            raise SystemExit(f"backup: {queued.status_code} {queued.text}")
        job_id = queued.json()["id"]
        connected: asyncio.Queue[None] = asyncio.Queue()
        following = [
            asyncio.create_task(watch(base, token, job_id, connected)) for _ in range(watchers)
        ]
        for _ in range(watchers):
            await connected.get()
        cpu_before = cpu_seconds(server_pid)
        await maintenance(client, on=False)
        seen = await asyncio.gather(*following)
        while True:
            job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.2)
        if job["state"] != "succeeded":
            raise SystemExit(f"job {job_id} {job['state']}: {job['error']}")
        return {
            "job": job_id,
            "watchers": watchers,
            "duration_s": job["duration_s"],
            "server_cpu_s": cpu_seconds(server_pid) - cpu_before,
            "lags": [lag for one in seen for lag in one["lags"]],
            "events": [one["events"] for one in seen],
            "all_ended": all(one["ended"] for one in seen),
            "progress": job["progress"],
        }


async def maintenance(client: httpx.AsyncClient, *, on: bool) -> None:
    body = {"on": True, "reason": "bench/sse.py"} if on else {"on": False}
    answer = await client.put("/api/v1/maintenance", json=body)
    if answer.status_code != 200:
        raise SystemExit(f"maintenance: {answer.status_code} {answer.text}")


def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(20261207)
    tree = work / "tree"
    size = generate(tree, args.files, rng)
    env = {
        **os.environ,
        "BENCH_PASSPHRASE": PASSPHRASE,
        "BENCH_USER_PASSWORD": USER_PASSWORD,
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
    }
    inv = inventory(work, tree)
    run([*COSTOR, "apply", "--auto-approve", "-c", str(inv)], env)
    token = json.loads(
        run(
            [*COSTOR, "token", "create", "--user", "bench", "--scope", "admin", "--json"]
            + ["-c", str(inv)],
            env,
        )[2]
    )["token"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*COSTOR, "serve", "--tick", "0.2", "--listen", f"127.0.0.1:{port}", "-c", str(inv)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs: list[dict[str, Any]] = []
    load: list[float] = []  # the 1-minute load average after each run: others' work too
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("costor serve did not answer")
            time.sleep(0.2)
        warm = asyncio.run(one_job(base, token, server.pid, 0))  # stores the data
        when = time.time()
        for n in range(args.repeats):
            for watchers in (0, args.watchers):
                when += 10
                touch_all(tree, when)
                runs.append(asyncio.run(one_job(base, token, server.pid, watchers)))
                load.append(os.getloadavg()[0])
                print(
                    f"run {n + 1}/{args.repeats}, {watchers} watchers: "
                    f"{runs[-1]['duration_s']:.2f} s",
                    file=sys.stderr,
                )
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "files": args.files,
        "bytes": size,
        "watchers": args.watchers,
        "repeats": args.repeats,
        "warm_up_s": warm["duration_s"],
        "runs": runs,
        "load": load,
    }


def report(args: argparse.Namespace, result: dict[str, Any], took: float) -> str:
    by: dict[int, list[dict[str, Any]]] = {0: [], args.watchers: []}
    for one in result["runs"]:
        by[one["watchers"]].append(one)
    lines = [
        "# Live job progress benchmark",
        "",
        f"Generated by `python bench/sse.py{' --quick' if args.quick else ''}` on "
        f"{_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} ({took:.0f} s). "
        "Do not edit by hand.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"1-minute load average after the runs {min(result['load']):.1f}–"
        f"{max(result['load']):.1f} (other work on the machine, when above the cores, "
        "adds noise to both columns).",
        f"- One backup job of a local client of {result['files']:,} files of 1–64 KiB "
        f"({result['bytes'] / 1024 / 1024:.0f} MiB, random), run by a real `costor serve` "
        f"on 127.0.0.1 (SQLite state). Each run reads and hashes every file again (their "
        "times moved on) and stores nothing new; the first, unmeasured run stored the data "
        f"({result['warm_up_s']:.1f} s).",
        f"- {result['repeats']} runs each, alternating; the watchers are httpx clients in "
        "the benchmark's process on the same machine, following "
        "`GET /api/v1/jobs/{id}/events` from before the job starts (it is queued in "
        "maintenance until all are connected) to its end.",
        "",
        "| Watchers | job time, median (s) | min–max (s) | server CPU per run (s) | "
        "events per watcher | every watcher saw the end |",
        "|---|---|---|---|---|---|",
    ]
    for watchers, runs in by.items():
        times = [one["duration_s"] for one in runs]
        cpu = statistics.median(one["server_cpu_s"] for one in runs)
        events = [e for one in runs for e in one["events"]]
        lines.append(
            f"| {watchers} | {statistics.median(times):.2f} | {min(times):.2f}–"
            f"{max(times):.2f} | {cpu:.2f} | "
            f"{statistics.median(events) if events else 0:.0f} | "
            f"{'yes' if all(one['all_ended'] for one in runs) else 'NO'} |"
        )
    base, watched = (statistics.median(one["duration_s"] for one in by[k]) for k in by)
    lags = [lag for one in by[args.watchers] for lag in one["lags"]]
    lag = percentiles(lags) if lags else {"p50": 0.0, "p99": 0.0}
    lines += [
        "",
        f"Job time with {args.watchers} watchers against none: "
        f"{(watched / base - 1) * 100:+.1f} % (median against median).",
        "",
        f"Event lag (a progress document's `updated_at` in the job's process to its "
        f"arrival at a watcher), {len(lags):,} events: p50 {lag['p50'] * 1000:.0f} ms, p99 "
        f"{lag['p99'] * 1000:.0f} ms. The job writes its progress at most every 0.5 s and "
        "the server reads it every 0.5 s, so up to ~0.5 s of it is the poll's period.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3,000 files, 2 repeats")
    parser.add_argument("--work", help="keep the run's files here")
    parser.add_argument("--out", help="write the Markdown report here")
    args = parser.parse_args()
    if args.quick:
        args.files, args.repeats = 3000, 2
    work = Path(args.work or tempfile.mkdtemp(prefix="costor-bench-sse-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = one_run(args, work)
        (work / "results.json").write_text(json.dumps(result, indent=2))
        text = report(args, result, time.monotonic() - started)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
