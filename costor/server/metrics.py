"""``/metrics``: Prometheus text, read from the state database at scrape time.

A custom collector, not counters kept in memory: the facts live in the database (the
jobs and snapshots of every daemon sharing it, those of `costor backup` run from a
shell), so a restarted server or a second one reports the same numbers. Each scrape
reads them once (the status report, the newest snapshot of each client, failed jobs,
the pools' totals).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from costor.ops.status import LEVELS, status
from costor.server import documents
from costor.server.gate import Gate


class StateCollector(Collector):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        with self.gate.use() as ctx:
            report = status(ctx)
            last = documents.last_snapshots(ctx)
            failed = documents.failed_jobs_by_kind(ctx)
            pools = documents.pool_documents(ctx)
        labels = ["client", "site", "pool"]
        age = GaugeMetricFamily(
            "costor_client_last_backup_age_seconds",
            "Age of the client's newest good backup (absent: never backed up)",
            labels=labels,
        )
        rpo = GaugeMetricFamily(
            "costor_client_rpo_seconds", "The client's recovery point objective", labels=labels
        )
        health = GaugeMetricFamily(
            "costor_client_health", "0 ok, 1 warning, 2 critical (costor status)", labels=labels
        )
        duration = GaugeMetricFamily(
            "costor_client_last_backup_duration_seconds",
            "How long the client's newest backup took",
            labels=labels,
        )
        processed = GaugeMetricFamily(
            "costor_client_last_backup_bytes",
            "Bytes the client's newest backup read",
            labels=labels,
        )
        added = GaugeMetricFamily(
            "costor_client_last_backup_added_bytes",
            "Bytes the client's newest backup added to its pool (after deduplication)",
            labels=labels,
        )
        last_time = GaugeMetricFamily(
            "costor_client_last_backup_timestamp_seconds",
            "When the client's newest backup was taken (Unix time)",
            labels=labels,
        )
        for client in report.clients:
            values = [client["client"], client["site"] or "", client["pool"] or ""]
            health.add_metric(values, LEVELS.index(client["health"]))
            if client["age_s"] is not None:
                age.add_metric(values, client["age_s"])
            if client["rpo_s"] is not None:
                rpo.add_metric(values, client["rpo_s"])
            newest = last.get(client["client"])
            if newest is not None:
                duration.add_metric(values, newest["duration_s"])
                processed.add_metric(values, newest["bytes_processed"])
                added.add_metric(values, newest["bytes_added"])
                when = datetime.fromisoformat(newest["time"].replace("Z", "+00:00"))
                last_time.add_metric(values, when.timestamp())
        selftest_ok = GaugeMetricFamily(
            "costor_client_last_selftest_ok",
            "1: the client's last self-test succeeded, 0: it failed (absent: none yet)",
            labels=labels,
        )
        selftest_time = GaugeMetricFamily(
            "costor_client_last_selftest_timestamp_seconds",
            "When the client's last self-test ended (Unix time)",
            labels=labels,
        )
        for client in report.clients:
            values = [client["client"], client["site"] or "", client["pool"] or ""]
            _outcome(client["last_selftest"], values, selftest_ok, selftest_time)
        yield from (age, rpo, health, duration, processed, added, last_time)
        yield from (selftest_ok, selftest_time)

        failures = CounterMetricFamily(
            "costor_jobs_failed", "Jobs that failed (after their retries), by kind", labels=["kind"]
        )
        for kind, count in sorted(failed.items()):
            failures.add_metric([kind], count)
        yield failures
        queue = GaugeMetricFamily("costor_jobs", "Jobs queued or running", labels=["state"])
        for state, count in sorted(report.jobs.items()):
            queue.add_metric([state], count)
        yield queue

        stored = GaugeMetricFamily(
            "costor_pool_stored_bytes", "Bytes written to the pool (compressed)", labels=["pool"]
        )
        raw = GaugeMetricFamily(
            "costor_pool_raw_bytes", "Bytes written to the pool before compression", labels=["pool"]
        )
        snapshots = GaugeMetricFamily(
            "costor_pool_snapshots", "Snapshots the catalogue records", labels=["pool"]
        )
        compression = GaugeMetricFamily(
            "costor_pool_compression_ratio",
            "Bytes before compression / bytes stored",
            labels=["pool"],
        )
        dedup = GaugeMetricFamily(
            "costor_pool_dedup_ratio",
            "What the pool's snapshots hold / bytes it stores before compression",
            labels=["pool"],
        )
        check_ok = GaugeMetricFamily(
            "costor_pool_last_check_ok",
            "1: the pool's last check succeeded, 0: it failed (absent: none yet)",
            labels=["pool"],
        )
        check_time = GaugeMetricFamily(
            "costor_pool_last_check_timestamp_seconds",
            "When the pool's last check ended (Unix time)",
            labels=["pool"],
        )
        for pool in pools:
            name = [pool["pool"]]
            stored.add_metric(name, pool["bytes_stored"])
            raw.add_metric(name, pool["bytes_raw"])
            snapshots.add_metric(name, pool["snapshots"])
            if pool["compression_ratio"] is not None:
                compression.add_metric(name, pool["compression_ratio"])
            if pool["dedup_ratio"] is not None:
                dedup.add_metric(name, pool["dedup_ratio"])
            _outcome(pool["last_check"], name, check_ok, check_time)
        yield from (stored, raw, snapshots, compression, dedup, check_ok, check_time)
        up = GaugeMetricFamily("costor_up", "1: the state database answered this scrape")
        up.add_metric([], 1)
        yield up


def _outcome(
    job: dict[str, Any] | None, labels: list[str], ok: GaugeMetricFamily, when: GaugeMetricFamily
) -> None:
    """A check's or self-test's last outcome: 1 or 0, and when it ended."""
    if job is None:
        return
    ok.add_metric(labels, 1 if job["state"] == "succeeded" else 0)
    if job["finished_at"]:
        ended = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
        when.add_metric(labels, ended.timestamp())


def registry(gate: Gate) -> CollectorRegistry:
    """A registry of its own (not the global one): only the state's facts."""
    found = CollectorRegistry(auto_describe=False)
    found.register(StateCollector(gate))
    return found
