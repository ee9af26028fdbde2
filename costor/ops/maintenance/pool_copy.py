"""``costor pool copy SRC DST``: resolve both ends, then copy the pool as stored."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from costor.errors import UsageError
from costor.ops.audit import audited
from costor.store.backends.registry import BackendSettings, open_backend, parse_location
from costor.store.copy import CopyReport, copy_pool
from costor.store.progress import Progress

if TYPE_CHECKING:
    from costor.ops.context import Context
    from costor.store.backends.base import Backend


def resolve_location(ctx: Context | None, text: str, *, like: str | None = None) -> Backend:
    """A declared pool's name, or a location the backend registry parses
    (``costor/store/backends/registry.py``): ``s3://bucket/prefix``, ``file:///path`` or
    a directory path. An S3 location takes its endpoint, region, path style, credentials
    and storage filters from the declared S3 pool ``like``; without one, from the
    environment (``COSTOR_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; ``COSTOR_S3_PATH_STYLE=1``)."""
    if ctx is not None and text in ctx.inventory.pools:
        return ctx.backend(text)
    settings = parse_location(text)
    if settings.scheme == "s3" and like is not None:
        settings = _like(ctx, like, settings)
    return open_backend(settings)


def _like(ctx: Context | None, like: str, location: BackendSettings) -> BackendSettings:
    """The settings of declared S3 pool ``like``, moved to the bucket and prefix of
    ``location``: its endpoint, region, path style, secrets, retries, rate limit and
    write verification (not its staging directory, which is that pool's own)."""
    if ctx is None:
        raise UsageError(message=f"--like {like}: needs an inventory declaring pool {like}")
    config = ctx.pool_config(like)
    if config.backend != "s3":
        raise UsageError(message=f"--like {like}: pool {like} is not an S3 pool")
    return replace(
        ctx.backend_settings(config), bucket=location.bucket, prefix=location.prefix, staging=None
    )


def copy(
    ctx: Context | None,
    source: str,
    destination: str,
    *,
    progress: Progress | None = None,
    verify_existing: bool = False,
    like: str | None = None,
) -> CopyReport:
    """``like``: the declared S3 pool whose endpoint and credentials the ``s3://``
    locations among ``source`` and ``destination`` use. Recorded in the audit log
    before anything is copied (it reads every object of the pool), when there is a
    state to record it in (``ctx``; a copy between bare locations has none)."""
    if ctx is None:
        return _copy(None, source, destination, progress, verify_existing, like)
    detail = {"source": source, "verify_existing": verify_existing}
    with audited(ctx, "pool.copy", destination, detail=detail, before=True) as noted:
        report = _copy(ctx, source, destination, progress, verify_existing, like)
        noted.update(copied=report.copied, replaced=report.replaced)
    return report


def _copy(
    ctx: Context | None,
    source: str,
    destination: str,
    progress: Progress | None,
    verify_existing: bool,
    like: str | None,
) -> CopyReport:
    if source == destination:
        raise UsageError(message="source and destination are the same")
    if like is not None and not any(t.startswith("s3://") for t in (source, destination)):
        raise UsageError(message=f"--like {like}: neither location is an s3:// location")
    return copy_pool(
        resolve_location(ctx, source, like=like),
        resolve_location(ctx, destination, like=like),
        progress=progress,
        verify_existing=verify_existing,
    )
