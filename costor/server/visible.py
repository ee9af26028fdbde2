"""What a caller may see, shared by the API's routes and the web UI's pages: which
snapshot a reference names among those it may see (browse, downloads, restore), so
none tells a caller limited to some clients that another client's snapshot exists;
and the status document as such a caller may see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from costor.errors import AmbiguousSnapshot, SnapshotNotFound
from costor.ops.context import Context
from costor.ops.control.tokens import Grant
from costor.ops.restore.snapshots import list_snapshots, resolve
from costor.ops.status import LEVELS
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


def status_seen_by(document: dict[str, Any], access: Access) -> dict[str, Any]:
    """The status document as a caller limited to some clients may see it: their lines,
    each site's health as the worst of theirs, no word of any other client (unapplied
    changes of theirs only; the inventory's errors, which may name anything, left out)."""
    if access.whole_site:
        return document
    clients = [c for c in document["clients"] if access.allows(c["client"])]
    for site in document["sites"]:
        mine = [str(c["health"]) for c in clients if c["site"] == site["site"]]
        site["health"] = max(mine, key=LEVELS.index, default="ok")
    # The site-wide problems (no daemon alive, a broken inventory) count as they are.
    levels = [str(site["health"]) for site in document["sites"]]
    if document["problems"]:
        levels.append(str(document["health"]))
    document["health"] = max(levels, key=LEVELS.index, default="ok")
    inventory = document["inventory"]
    inventory["errors"] = []
    inventory["unapplied"] = {
        address: change
        for address, change in inventory["unapplied"].items()
        if address.startswith("client.") and access.allows(address.removeprefix("client."))
    }
    return {**document, "clients": clients}


__all__ = ["resolve_visible", "status_seen_by"]
