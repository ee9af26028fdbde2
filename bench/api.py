#!/usr/bin/env python3
"""Site server benchmark: latency of the Admin API, and downloads against the CLI.

    python bench/api.py --out docs/benchmarks-api.md
    python bench/api.py --quick --out /tmp/api.md          # a smoke run (~1 min)

One pool holds a client with a tree of ``--files`` small files (100,000: 1,000
directories of 100) and a small client backed up until the pool holds ``--snapshots``
snapshots (1,000). A real ``costor serve`` answers on a loopback port; an admin token is
made with ``costor token create``. Measured, one request at a time (wall time seen by
the client, httpx, keep-alive):

- listing snapshots: ``GET /api/v1/snapshots?limit=100`` (the first page and a page in
  the middle) and one client's snapshots;
- browsing as a file browser does, one level (``depth=1``):
  ``GET /api/v1/snapshots/{id}/tree?path=/…/dNNN&depth=1`` for random directories of the
  large tree (100 files each), and random ``/…/pNNN`` (10 directories each, 1,000 files
  below them: the level alone is listed);
- downloading (when the server has the route): the whole large tree as ``.tar.zst``
  through ``GET /api/v1/snapshots/{id}/archive``, against ``costor restore --archive -
  --format tar.zst`` of the same snapshot in the same run: throughput, and the growth of
  the server's peak RSS (``VmHWM`` before and after) against the CLI's peak RSS.

The web UI, on a second site (``--ui-clients`` clients, 300, sharing ``--ui-snapshots``
snapshots, 10,000; and one client whose snapshot holds a directory of ``--ui-entries``
files, 20,000), logged in with a password as a browser is:

- the dashboard and the directory's page: time to the first byte (httpx, p50/p99) and
  the full load in Debian's chromium driven by Playwright (the navigation's
  ``loadEventEnd``: HTML, styles, scripts, the page laid out), p50/p99.

p50 and p99 of ``--requests`` requests each. Raw numbers go to WORK/results.json.
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
import time
from pathlib import Path
from typing import Any

import httpx

COSTOR = [sys.executable, "-m", "costor"]
PASSPHRASE = "bench-only-passphrase"
USER_PASSWORD = "bench-only-user-password"
MIB = 1024 * 1024


def generate(root: Path, files: int, rng: random.Random) -> None:
    """``files`` files of 1–4 KiB, 100 to a directory, ten directories to a parent."""
    for i in range(files):
        directory = root / f"p{i // 1000:03d}" / f"d{i // 100:04d}"
        if i % 100 == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:06d}.txt").write_bytes(rng.randbytes(rng.randint(1024, 4096)))


def inventory(work: Path, tree: Path, small: Path) -> Path:
    path = work / "inventory.toml"
    lines = [
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
        "[policies.daily]",
        'schedule = "0 2 * * *"',
        "",
        "[groups.admins]",
        'roles = ["admin"]',
        "",
        "[users.bench]",
        'groups = ["admins"]',
        'password = { env = "BENCH_USER_PASSWORD" }',
        "",
    ]
    for name, source in (("large", tree), ("small", small)):
        lines += [
            f"[clients.{name}]",
            'site = "hq"',
            'pool = "main"',
            'policy = "daily"',
            'transport = "local"',
            f"paths = [{json.dumps(str(source))}]",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def run(argv: list[str], env: dict[str, str], stdout: Any = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes from ``os.wait4``, stdout) of one process."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(argv, env=env, stdout=stdout or out_file, stderr=err_file)
        _pid, status, usage = os.wait4(process.pid, 0)
        elapsed = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            err_file.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed:\n{err_file.read().decode()}")
        out_file.seek(0)
        return elapsed, usage.ru_maxrss * 1024, out_file.read().decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(client: httpx.Client) -> None:
    """Until ``costor serve`` answers ``/healthz`` (a minute at most)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("costor serve did not answer")
        time.sleep(0.2)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def many_snapshots(inv: Path, count: int) -> float:
    """Back the small client up ``count`` times in this process (one key derivation,
    one state connection): ~20 ms a snapshot instead of a process start each."""
    os.environ["BENCH_PASSPHRASE"] = PASSPHRASE
    from costor.ops.backup.run import run_backup
    from costor.ops.context import Context

    started = time.monotonic()
    ctx = Context(inv)
    for _ in range(count):
        run_backup(ctx, "small", trigger=None)
    return time.monotonic() - started


def timed(client: httpx.Client, urls: list[str]) -> list[float]:
    """Milliseconds of each GET, in order; every answer must be a 200."""
    times = []
    for url in urls:
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {url}: {response.status_code} {response.text[:300]}")
    return times


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50": statistics.median(ordered), "p99": p99, "n": len(ordered)}


def one_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(20261207)
    tree, small = work / "tree", work / "small"
    generate(tree, args.files, rng)
    small.mkdir()
    (small / "note.txt").write_text("a small client\n")
    env = {
        **os.environ,
        "BENCH_PASSPHRASE": PASSPHRASE,
        "BENCH_USER_PASSWORD": USER_PASSWORD,
        "PYTHONPYCACHEPREFIX": str(work / "pycache"),
    }
    inv = inventory(work, tree, small)
    c = [*COSTOR, "-c", str(inv)]
    result: dict[str, Any] = {"files": args.files, "snapshots": args.snapshots}
    run([*COSTOR, "apply", "--auto-approve", "-c", str(inv)], env)
    result["large_backup_s"] = run([*COSTOR, "backup", "large", "-c", str(inv)], env)[0]
    result["small_backups_s"] = many_snapshots(inv, args.snapshots - 1)
    large_id = json.loads(
        run([*COSTOR, "snapshots", "--client", "large", "--json", "-c", str(inv)], env)[2]
    )[0]["id"]
    token = json.loads(
        run(
            [*COSTOR, "token", "create", "--user", "bench", "--scope", "admin", "--json"]
            + ["-c", str(inv)],
            env,
        )[2]
    )["token"]
    del c

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*COSTOR, "serve", "--listen", f"127.0.0.1:{port}", "-c", str(inv)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=600
        ) as client:
            wait_until_serving(client)
            result["api"] = measure(client, args, large_id, tree)
            result["download"] = download(client, server.pid, large_id, inv, env, work)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result


def measure(
    client: httpx.Client, args: argparse.Namespace, large_id: str, tree: Path
) -> dict[str, Any]:
    n = args.requests
    rng = random.Random(7)
    timed(client, ["/api/v1/snapshots?limit=100"] * 3)  # warm: pools opened, keys derived
    middle = max(0, args.snapshots // 2)
    directories = args.files // 100
    tree_urls = [
        f"/api/v1/snapshots/{large_id}/tree?depth=1&path="
        + f"{tree}/p{(d := rng.randrange(directories)) // 10:03d}/d{d:04d}"
        for _ in range(n)
    ]
    parent_urls = [
        f"/api/v1/snapshots/{large_id}/tree?depth=1&path="
        + f"{tree}/p{rng.randrange(max(1, directories // 10)):03d}"
        for _ in range(n)
    ]
    return {
        "list_first_page": percentiles(timed(client, ["/api/v1/snapshots?limit=100"] * n)),
        "list_middle_page": percentiles(
            timed(client, [f"/api/v1/snapshots?limit=100&offset={middle}"] * n)
        ),
        "list_one_client": percentiles(
            timed(client, ["/api/v1/snapshots?client=large&limit=100"] * n)
        ),
        "browse_directory": percentiles(timed(client, tree_urls)),
        "browse_parent": percentiles(timed(client, parent_urls)),
    }


def download(
    client: httpx.Client, pid: int, large_id: str, inv: Path, env: dict[str, str], work: Path
) -> dict[str, Any] | None:
    """The tree as .tar.zst over the API and by the CLI; None without the route."""
    url = f"/api/v1/snapshots/{large_id}/archive?path=/&format=tar.zst"
    hwm_before = status_kib(pid, "VmHWM")
    started = time.monotonic()
    size = 0
    with client.stream("GET", url) as response:
        if response.status_code == 404 and "archive" not in response.headers.get(
            "content-disposition", ""
        ):
            response.read()
            if response.json().get("error") in (None, "NotFound", "HTTPException"):
                return None
        if response.status_code != 200:
            raise SystemExit(f"GET {url}: {response.status_code}")
        for chunk in response.iter_bytes():
            size += len(chunk)
    api_s = time.monotonic() - started
    hwm_after = status_kib(pid, "VmHWM")
    out = work / "cli.tar.zst"
    with open(out, "wb") as handle:
        cli_s, cli_rss, _ = run(
            [*COSTOR, "restore", large_id, "--archive", "-", "--format", "tar.zst"]
            + ["-c", str(inv)],
            env,
            stdout=handle,
        )
    return {
        "api_s": api_s,
        "api_bytes": size,
        "server_hwm_before_kib": hwm_before,
        "server_hwm_after_kib": hwm_after,
        "cli_s": cli_s,
        "cli_bytes": out.stat().st_size,
        "cli_peak_rss": cli_rss,
    }


def ui_inventory(work: Path, sources: list[Path], big: Path) -> Path:
    """The UI's site: ``sources`` as clients c000…, and ``big`` as client ``wide``."""
    path = work / "ui-inventory.toml"
    head = inventory(work, big, big).read_text().split("[clients.")[0]
    lines = [
        head.replace('state_dir = "state"', 'state_dir = "ui-state"').replace(
            'path = "costor-pool"', 'path = "ui-pool"'
        )
    ]
    for index, source in [*enumerate(sources), (-1, big)]:
        name = "wide" if index < 0 else f"c{index:03d}"
        lines.append(
            f'[clients.{name}]\nsite = "hq"\npool = "main"\npolicy = "daily"\n'
            f'transport = "local"\npaths = [{json.dumps(str(source))}]\n'
        )
    path.write_text("\n".join(lines))
    return path


def ui_snapshots(inv: Path, clients: list[str], count: int) -> float:
    """``count`` snapshots spread over ``clients``, made in this process."""
    os.environ["BENCH_PASSPHRASE"] = PASSPHRASE
    from costor.ops.backup.run import run_backup
    from costor.ops.context import Context

    started = time.monotonic()
    ctx = Context(inv)
    for index in range(count):
        run_backup(ctx, clients[index % len(clients)], trigger=None)
    return time.monotonic() - started


def ui_run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The web UI's pages on a site of many clients and snapshots (module docstring)."""
    sources = []
    for index in range(args.ui_clients):
        source = work / "ui-src" / f"c{index:03d}"
        source.mkdir(parents=True)
        (source / "note.txt").write_text(f"client {index}\n")
        sources.append(source)
    big = work / "ui-src" / "wide"
    (big / "many").mkdir(parents=True)
    for index in range(args.ui_entries):
        (big / "many" / f"entry-{index:05d}.txt").write_text(f"{index}\n")
    env = {**os.environ, "BENCH_PASSPHRASE": PASSPHRASE, "BENCH_USER_PASSWORD": USER_PASSWORD}
    inv = ui_inventory(work, sources, big)
    run([*COSTOR, "apply", "--auto-approve", "-c", str(inv)], env)
    result: dict[str, Any] = {"clients": args.ui_clients, "entries": args.ui_entries}
    names = [f"c{i:03d}" for i in range(args.ui_clients)]
    result["snapshots_s"] = ui_snapshots(inv, [*names, "wide"], args.ui_snapshots)
    result["snapshots"] = args.ui_snapshots
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [*COSTOR, "serve", "--listen", f"127.0.0.1:{port}", "-c", str(inv)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            wait_until_serving(client)
            login = client.post("/api/v1/login", json={"user": "bench", "password": USER_PASSWORD})
            if login.status_code != 200:
                raise SystemExit(f"login: {login.status_code} {login.text}")
            cookie = client.cookies["costor_session"]
            wide = client.get("/api/v1/snapshots?client=wide&limit=1").json()[0]["id"]
            pages = {
                "dashboard": "/",
                "directory": f"/snapshots/{wide}/tree?path=" + str(big / "many"),
            }
            result["pages"] = {
                name: {
                    "ttfb": percentiles(first_bytes(client, [url] * args.requests)),
                    "browser": browser_loads(base, cookie, url, max(10, args.requests // 5)),
                }
                for name, url in pages.items()
            }
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result


def first_bytes(client: httpx.Client, urls: list[str]) -> list[float]:
    """Milliseconds to the first byte of each page (the session cookie sent)."""
    times = []
    for url in urls:
        started = time.perf_counter()
        with client.stream("GET", url) as response:
            chunks = response.iter_raw()
            next(chunks, b"")
            times.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"GET {url}: {response.status_code}")
            for _rest in chunks:
                pass
    return times


def browser_loads(base: str, cookie: str, url: str, count: int) -> dict[str, Any]:
    """The page loaded ``count`` times in Debian's chromium: time to the first byte and
    to the load event, as the browser's navigation timing says."""
    from playwright.sync_api import sync_playwright

    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
    ]  # fmt: skip
    ttfb, load = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        context = browser.new_context()
        context.add_cookies([{"name": "costor_session", "value": cookie, "url": base}])
        page = context.new_page()
        for _ in range(count + 1):
            page.goto(base + url, wait_until="load")
            timing = page.evaluate(
                "() => { const n = performance.getEntriesByType('navigation')[0];"
                " return [n.responseStart - n.startTime, n.loadEventEnd - n.startTime]; }"
            )
            ttfb.append(float(timing[0]))
            load.append(float(timing[1]))
        browser.close()
    # The first load warms the server's caches and the browser's: it is left out.
    return {"ttfb": percentiles(ttfb[1:]), "load": percentiles(load[1:])}


def report(args: argparse.Namespace, result: dict[str, Any], took: float) -> str:
    api = result["api"]
    rows = [
        ("List snapshots, first page of 100", api["list_first_page"]),
        (f"List snapshots, page at offset {args.snapshots // 2}", api["list_middle_page"]),
        ("List the large client's snapshots (it has one)", api["list_one_client"]),
        ("Browse one directory (100 files, `depth=1`)", api["browse_directory"]),
        ("Browse one directory of directories (10, `depth=1`)", api["browse_parent"]),
    ]
    lines = [
        "# Site server benchmark",
        "",
        f"Generated by `python bench/api.py{' --quick' if args.quick else ''}` on "
        f"{_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} ({took:.0f} s). "
        "Do not edit by hand.",
        "",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}.",
        f"- Pool: one client with {result['files']:,} files of 1–4 KiB "
        f"({result['files'] // 100:,} directories of 100), and {result['snapshots']:,} "
        "snapshots in all (the others of a one-file "
        "client). First backup of the large tree: "
        f"{result['large_backup_s']:.1f} s.",
        f"- A real `costor serve` on 127.0.0.1, an admin token; {args.requests} requests "
        "per row, one at a time, keep-alive; wall time seen by the client.",
        "",
        "| Request | p50 (ms) | p99 (ms) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t['p50']:.1f} | {t['p99']:.1f} |" for name, t in rows]
    download = result.get("download")
    lines.append("")
    if download is None:
        lines.append("Downloads: the server has no archive route yet; not measured.")
    else:
        mib = download["api_bytes"] / MIB
        lines += [
            "| Download of the large tree as .tar.zst | wall (s) | MiB/s | memory |",
            "|---|---|---|---|",
            f"| API (`GET …/archive`) | {download['api_s']:.2f} | "
            f"{mib / download['api_s']:.1f} | server peak RSS "
            f"{download['server_hwm_before_kib'] / 1024:.0f} → "
            f"{download['server_hwm_after_kib'] / 1024:.0f} MiB |",
            f"| CLI (`costor restore --archive -`) | {download['cli_s']:.2f} | "
            f"{download['cli_bytes'] / MIB / download['cli_s']:.1f} | peak RSS "
            f"{download['cli_peak_rss'] / MIB:.0f} MiB |",
        ]
    ui = result.get("ui")
    if ui is not None:
        lines += [
            "",
            "## The web UI",
            "",
            f"A second site: {ui['clients']:,} clients and {ui['snapshots']:,} snapshots "
            f"(made in {ui['snapshots_s']:.0f} s), one of them a directory of "
            f"{ui['entries']:,} files; logged in with a password. Time to the first byte "
            f"as httpx sees it ({args.requests} requests), and the page in Debian's "
            "chromium driven by Playwright (the navigation timing's first byte and load "
            "event; the first load left out).",
            "",
            "| Page | first byte p50 / p99 (ms) | in chromium: first byte p50 (ms) | "
            "full load p50 / p99 (ms) |",
            "|---|---|---|---|",
        ]
        names = {
            "dashboard": "Dashboard",
            "directory": f"A directory of {ui['entries']:,} entries (its first page)",
        }
        for key, page in ui["pages"].items():
            ttfb, browser = page["ttfb"], page["browser"]
            lines.append(
                f"| {names[key]} | {ttfb['p50']:.0f} / {ttfb['p99']:.0f} | "
                f"{browser['ttfb']['p50']:.0f} | "
                f"{browser['load']['p50']:.0f} / {browser['load']['p99']:.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ui-clients", type=int, default=300)
    parser.add_argument("--ui-snapshots", type=int, default=10_000)
    parser.add_argument("--ui-entries", type=int, default=20_000)
    parser.add_argument("--no-ui", action="store_true", help="leave the web UI out")
    parser.add_argument("--quick", action="store_true", help="5,000 files, 100 snapshots")
    parser.add_argument("--work", help="keep the run's files here")
    parser.add_argument("--out", help="write the Markdown report here")
    args = parser.parse_args()
    if args.quick:
        args.files, args.snapshots, args.requests = 5000, 100, 50
        args.ui_clients, args.ui_snapshots, args.ui_entries = 20, 200, 2000
    work = Path(args.work or tempfile.mkdtemp(prefix="costor-bench-api-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        result = one_run(args, work)
        if not args.no_ui:
            result["ui"] = ui_run(args, work)
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
