"""Prune the pools of the inventory and keep the state's pack catalogue in step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from costor.config.model import duration_seconds, percentage_fraction
from costor.db import catalogue
from costor.db.session import session_scope
from costor.ops.audit import anchor_head, audited
from costor.ops.context import Context
from costor.store.gc.prune import PruneOptions, prune
from costor.store.progress import Progress


def prune_options(ctx: Context, pool: str, **overrides: Any) -> Any:
    """The pool's declared ``prune`` settings, with command-line ``overrides`` (None:
    not given) on top."""
    declared = ctx.pool_config(pool).prune
    options = PruneOptions(
        safety_window=duration_seconds(declared.safety_window),
        repack_threshold=percentage_fraction(declared.repack_threshold),
        max_unused=percentage_fraction(declared.max_unused),
        max_repack_bytes=declared.max_repack_mib * 1024 * 1024,
    )
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def prune_pools(
    ctx: Context,
    *,
    pool: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    **overrides: Any,
) -> list[tuple[str, Any]]:
    """(pool name, PruneReport) per pool; each pool's prune is recorded in the audit
    log before it deletes anything (costor.ops.audit)."""
    reports = []
    for name in ctx.pool_names(pool):
        with audited(ctx, "prune", f"pool:{name}", before=True, dry_run=dry_run) as noted:
            options = prune_options(ctx, name, dry_run=dry_run, **overrides)
            opened = ctx.open_pool(name, load_index=False)
            report = prune(opened, options, progress=progress)
            report.pool = name
            if report.deleted or report.written:
                with session_scope(ctx.engine) as session:
                    catalogue.update_packs(
                        session, opened.uuid, deleted=report.deleted, written=report.written
                    )
            noted.update(
                packs_condemned=report.packs_condemned,
                packs_deleted=report.packs_deleted,
                bytes_deleted=report.bytes_deleted,
            )
        if not dry_run:
            anchor_head(ctx, name)
        reports.append((name, report))
    return reports
