"""``costor pool copy SRC DST``: resolve both ends, then copy the pool as stored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from costor.errors import UsageError
from costor.store.progress import Progress

if TYPE_CHECKING:
    from costor.ops.context import Context
    from costor.store.backends.base import Backend
    from costor.store.copy import CopyReport


def resolve_location(ctx: Context | None, text: str, *, like: str | None = None) -> Backend:
    """A declared pool's name, ``s3://bucket/prefix``, ``file:///path`` or a directory
    path. An S3 location takes its endpoint, region, path style, credentials and storage
    filters from the declared S3 pool ``like``; without one, from the environment
    (``COSTOR_S3_ENDPOINT`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; ``COSTOR_S3_PATH_STYLE=1``)."""
    if ctx is not None and text in ctx.inventory.pools:
        return ctx.backend(text)
    if text.startswith("s3://"):
        from costor.store.backends.s3 import S3Backend

        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise UsageError(message=f"{text!r}: no bucket in the S3 location")
        if like is not None:
            return _like(ctx, like, bucket, prefix)
        return S3Backend(
            bucket=bucket,
            prefix=prefix,
            endpoint=os.environ.get("COSTOR_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            path_style=os.environ.get("COSTOR_S3_PATH_STYLE") == "1",
        )
    if "://" in text and not text.startswith("file://"):
        raise UsageError(
            message=f"{text!r}: unknown location scheme (use a path, file:// or s3://)"
        )
    from costor.store.backends.local import LocalBackend

    return LocalBackend(Path(text.removeprefix("file://")).resolve())


def _like(ctx: Context | None, like: str, bucket: str, prefix: str) -> Backend:
    """The storage of declared S3 pool ``like``, moved to ``bucket``/``prefix``: its
    endpoint, region, path style, secrets, retries, rate limit and write verification
    (not its staging directory, which is that pool's own)."""
    if ctx is None:
        raise UsageError(message=f"--like {like}: needs an inventory declaring pool {like}")
    config = ctx.pool_config(like)
    if config.backend != "s3":
        raise UsageError(message=f"--like {like}: pool {like} is not an S3 pool")
    return ctx.backend_for(
        config.model_copy(update={"bucket": bucket, "prefix": prefix, "staging": False})
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
    locations among ``source`` and ``destination`` use."""
    from costor.store.copy import copy_pool

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
