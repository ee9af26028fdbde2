"""Which snapshot a reference names, among those the caller may see: shared by every
route that takes a snapshot (browse, downloads, restore), so none tells a caller
limited to some clients that another client's snapshot exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

from costor.errors import AmbiguousSnapshot, SnapshotNotFound
from costor.ops.context import Context
from costor.ops.control.tokens import Grant
from costor.ops.restore.snapshots import list_snapshots, resolve
from costor.server.permissions import Access

if TYPE_CHECKING:
    from costor.store.snapshot import Snapshot


def resolve_visible(
    ctx: Context, who: Grant, ref: str, permission: str = "snapshots.read"
) -> tuple[str, Snapshot]:
    """(pool, snapshot) for ``ref`` as :func:`resolve` finds it, among the snapshots
    ``who`` may see: for a caller limited to some clients, a prefix is matched against
    their snapshots only (so no answer, not even "ambiguous", tells that another
    client's snapshot exists) and another client's ``CLIENT:latest`` is not found. Then
    ``permission`` on the snapshot's client: 403 without it."""
    if not who.sees_everything:
        if ref.endswith(":latest"):
            if not who.sees_client(ref.removesuffix(":latest")):
                raise SnapshotNotFound(ref=ref)
        else:
            ids = {
                snapshot.id
                for _pool, snapshot in list_snapshots(ctx)
                if who.sees_client(snapshot.client) and snapshot.id.startswith(ref.lower())
            }
            if not ids:
                raise SnapshotNotFound(ref=ref)
            if len(ids) > 1:
                raise AmbiguousSnapshot(ref=ref, count=len(ids))
            ref = ids.pop()
    name, _pool, found = resolve(ctx, ref, load_index=False)
    Access(who, permission).client(found.client, missing=SnapshotNotFound(ref=ref))
    return name, found


__all__ = ["resolve_visible"]
