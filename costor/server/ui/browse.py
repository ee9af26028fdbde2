"""The web UI's snapshot browser (costor/server/ui/__init__.py): one directory of a
snapshot at a time, a file's details, the versions of one path across a client's
snapshots, the restore form and the comparison of two snapshots.

Each page does what the Admin API's route does, with its permission, and renders HTML
instead of JSON: a directory is ``GET /api/v1/snapshots/{s}/tree?depth=1`` (one tree
read, not the subtree below it), the versions are ``GET /api/v1/clients/{c}/versions``,
a restore is ``POST /api/v1/snapshots/{s}/restore`` and a comparison is ``costor diff``.
Snapshots are found by :func:`~costor.server.visible.resolve_visible`, so an end user
who names another client's snapshot (or a prefix of its id) gets the same 404 page as
for one that does not exist. Downloads are links to the API's download routes (the
session cookie authenticates a GET there, and the API audits every download).

Why pages of :data:`PAGE_SIZE` rows: a directory of 20,000 entries read from one tree
costs little, but 20,000 table rows are megabytes of HTML that a phone renders for
seconds; so a page shows 500 rows (directories first, then by name) with a pager and
a filter by name.

Every name in a snapshot is untrusted: the templates are autoescaped, and each link is
built here with :func:`urllib.parse.quote` (a name with ``#``, ``%``, ``?``, ``"`` or
a newline stays one query value). A name that is not UTF-8 is shown with backslash
escapes; its link carries its raw bytes (``surrogateescape``), which
:func:`exact_path` takes back from the raw query (Starlette's parsing would replace
them), so it opens here; the API's download routes take text only, so such a path
offers no download or restore of its own (its parent directory's archive holds it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from costor.errors import PermissionDenied, UnknownResource, UsageError
from costor.ops.jobs.requests import queue_job
from costor.ops.restore.browse import CHANGE_KINDS, diff_snapshots, list_snapshot, mode_text
from costor.ops.restore.download import checked_path, content_id, file_versions
from costor.ops.restore.snapshots import list_snapshots
from costor.server.permissions import Access, use
from costor.server.ui.pages import Viewer, checked_form, render, url_path, viewer
from costor.server.visible import resolve_visible
from costor.store.diff import Difference
from costor.store.snapshot import Snapshot
from costor.store.tree import CONTENT_TYPES, Node

router = APIRouter()
READ = "snapshots.read"  # browsing trees, file details, versions, downloads
RESTORE = "snapshots.restore"
PAGE_SIZE = 500  # rows per page (see the module docstring)
MAX_PAGE = 1_000_000
MAX_TEXT = 4096  # a path, a target directory: as the API's RestoreRequest
MAX_CLIENT = 255
CHANGE_LABELS = {
    "added": "added",
    "removed": "removed",
    "modified": "changed",
    "metadata": "metadata only",
}
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PathText = Annotated[str, Query(max_length=MAX_TEXT)]


@dataclass(frozen=True)
class Row:
    """One entry of a directory as a table row shows it."""

    name: str
    type: str
    size: int
    mtime: str
    href: str


@dataclass(frozen=True)
class Pager:
    """Which page of ``total`` rows is shown, and the links to its neighbours."""

    page: int
    pages: int
    total: int
    first_row: int
    last_row: int
    previous: str | None
    next: str | None


def shown(text: str) -> str:
    """A name or path as a page shows it: undecodable bytes as backslash escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_text(path: str) -> bool:
    """Whether ``path`` is valid UTF-8 all through (no raw bytes kept as surrogates)."""
    return path == shown(path)


def exact_path(request: Request, parsed: str) -> str:
    """The ``path`` query parameter with the raw bytes of a name that is not UTF-8 kept
    (``surrogateescape``, as a snapshot's listing names it): Starlette's parsing
    replaces them, and the page's own links would lead nowhere. ``parsed``: the value
    as FastAPI parsed (and validated) it, when the raw query has none."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    found = parsed
    for key, value in parse_qsl(
        query, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"
    ):
        if key == "path":
            found = value  # the last one: FastAPI took (and checked the length of) the last
    return found if len(found) <= MAX_TEXT else parsed


def link(*parts: str, **query: str | int) -> str:
    """A URL of this server: quoted path parts, then the query (each value quoted, a
    path's slashes kept readable)."""
    base = url_path(*parts)
    if not query:
        return base
    encoded = urlencode(
        {key: str(value) for key, value in query.items()},
        quote_via=quote,
        safe="/",
        errors="surrogateescape",
    )
    return f"{base}?{encoded}"


def when(mtime_ns: int) -> str:
    """A node's modification time, in UTC to the second."""
    return datetime.fromtimestamp(mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def paged(total: int, page: int, make_link: Any) -> Pager:
    """Page ``page`` (past the end: the last) of ``total`` rows, :data:`PAGE_SIZE` each;
    ``make_link(n)`` is page n's URL."""
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)
    start = (page - 1) * PAGE_SIZE
    return Pager(
        page=page,
        pages=pages,
        total=total,
        first_row=min(start + 1, total),
        last_row=min(start + PAGE_SIZE, total),
        previous=make_link(page - 1) if page > 1 else None,
        next=make_link(page + 1) if page < pages else None,
    )


def snapshot_facts(found: Snapshot, pool: str) -> dict[str, Any]:
    """What a page's header says of a snapshot: its summary, with its file count."""
    facts = {**found.summary(), "pool": pool}
    facts["files"] = sum(facts[f] for f in ("files_new", "files_changed", "files_unmodified"))
    # The backed-up paths, a click away: a snapshot's root is often a few levels of
    # directories above them (/home/…).
    facts["path_links"] = [
        (shown(path), link("snapshots", found.id, "tree", path=path)) for path in found.paths
    ]
    return facts


def crumbs(found: Snapshot, path: str) -> list[tuple[str, str]]:
    """The breadcrumbs of ``path`` in ``found``: the client, the snapshot, then each
    directory on the way (each a link to its listing)."""
    trail = [
        (found.client, url_path("clients", found.client)),
        (f"snapshot {found.id[:12]}", url_path("snapshots", found.id)),
    ]
    walked = ""
    for part in [p for p in path.split("/") if p]:
        walked += "/" + part
        trail.append((shown(part), link("snapshots", found.id, "tree", path=walked)))
    return trail


def _entry_href(snapshot_id: str, path: str, node: Node) -> str:
    if node.type == "dir":
        return link("snapshots", snapshot_id, "tree", path=path)
    return link("snapshots", snapshot_id, "file", path=path)


@router.get("/snapshots/{ref}", response_class=HTMLResponse)
def snapshot_page(request: Request, ref: str, who: Viewer = Depends(viewer)) -> Response:
    """A snapshot: its header and its root directory."""
    return directory(request, who, ref, "/", 1, "")


@router.get("/snapshots/{ref}/tree", response_class=HTMLResponse)
def tree_page(
    request: Request,
    ref: str,
    path: PathText = "/",
    page: PageNumber = 1,
    q: Annotated[str, Query(max_length=255)] = "",
    who: Viewer = Depends(viewer),
) -> Response:
    """One directory of a snapshot, a page of its entries (``q``: names containing it)."""
    return directory(request, who, ref, exact_path(request, path), page, q)


def directory(request: Request, who: Viewer, ref: str, path: str, page: int, q: str) -> Response:
    """The directory page (a file's path goes to the file's page)."""
    path = checked_path(path)
    with use(request) as ctx:
        pool, found = resolve_visible(ctx, who.grant, ref, READ)
        listing = list_snapshot(ctx, snapshot=found.id, pool=pool, path=path, depth=1)
    own = listing.entries[0][1] if listing.entries and listing.entries[0][0] == path else None
    if own is not None and own.type != "dir":
        return RedirectResponse(link("snapshots", found.id, "file", path=path), status_code=303)
    children = [(p, node) for p, node in listing.entries if p != path]
    children.sort(key=lambda entry: (entry[1].type != "dir", entry[1].name))
    needle = q.strip().casefold()
    if needle:
        children = [(p, n) for p, n in children if needle in shown(p.rsplit("/", 1)[-1]).casefold()]
    extra: dict[str, str] = {"q": q} if needle else {}

    def page_link(number: int) -> str:
        return link("snapshots", found.id, "tree", path=path, page=number, **extra)

    pager = paged(len(children), page, page_link)
    start = (pager.page - 1) * PAGE_SIZE
    rows = [
        Row(
            name=shown(p.rsplit("/", 1)[-1]),
            type=node.type,
            size=node.size,
            mtime=when(node.mtime_ns),
            href=_entry_href(found.id, p, node),
        )
        for p, node in children[start : start + PAGE_SIZE]
    ]
    archive = {"path": path}
    text = is_text(path)  # else the API, whose query is text, would not find it
    return render(
        request,
        "snapshot.html",
        who,
        title=f"{found.client} {found.id[:12]} {shown(path)}",
        crumbs=crumbs(found, path),
        snapshot=snapshot_facts(found, pool),
        client_href=url_path("clients", found.client),
        path=shown(path),
        # The filter form sends the path as text: not for a name that is not UTF-8.
        raw_path=path if is_text(path) else None,
        rows=rows,
        pager=pager,
        q=q,
        tree_url=link("snapshots", found.id, "tree"),
        show_all=link("snapshots", found.id, "tree", path=path),
        parent=link("snapshots", found.id, "tree", path=path.rsplit("/", 1)[0] or "/")
        if path != "/"
        else None,
        download_zip=link("api", "v1", "snapshots", found.id, "archive", **archive, format="zip")
        if text
        else None,
        download_tarzst=link(
            "api", "v1", "snapshots", found.id, "archive", **archive, format="tar.zst"
        )
        if text
        else None,
        restore=link("snapshots", found.id, "restore", path=path)
        if who.may(RESTORE, found.client) and text
        else None,
        compare=link("compare", a=found.id),
    )


@router.get("/snapshots/{ref}/file", response_class=HTMLResponse)
def file_page(
    request: Request, ref: str, path: PathText, who: Viewer = Depends(viewer)
) -> Response:
    """One entry of a snapshot: its details, a download and its previous versions."""
    path = checked_path(exact_path(request, path))
    with use(request) as ctx:
        pool, found = resolve_visible(ctx, who.grant, ref, READ)
        listing = list_snapshot(ctx, snapshot=found.id, pool=pool, path=path, depth=0)
    if not listing.entries or listing.entries[0][1].type == "dir":
        return RedirectResponse(link("snapshots", found.id, "tree", path=path), status_code=303)
    node = listing.entries[0][1]
    details = {
        "type": node.type,
        "size": node.size,
        "mode": f"{mode_text(node.type, node.mode)} ({node.mode & 0o7777:04o})",
        "owner": f"{node.user or node.uid} ({node.uid})",
        "group": f"{node.group or node.gid} ({node.gid})",
        "mtime": when(node.mtime_ns),
        "content_id": content_id(node),
        "target": node.target.decode("utf-8", "backslashreplace") if node.target else None,
    }
    return render(
        request,
        "file.html",
        who,
        title=f"{shown(path.rsplit('/', 1)[-1])} in {found.client} {found.id[:12]}",
        crumbs=crumbs(found, path),
        snapshot=snapshot_facts(found, pool),
        client_href=url_path("clients", found.client),
        path=shown(path),
        name=shown(path.rsplit("/", 1)[-1]),
        details=details,
        download=link("api", "v1", "snapshots", found.id, "file", path=path)
        if node.type in CONTENT_TYPES and is_text(path)
        else None,
        versions=link("clients", found.client, "versions", path=path),
        restore=link("snapshots", found.id, "restore", path=path)
        if who.may(RESTORE, found.client) and is_text(path)
        else None,
        folder=link("snapshots", found.id, "tree", path=path.rsplit("/", 1)[0] or "/"),
    )


@router.get("/clients/{client}/versions", response_class=HTMLResponse)
def versions_page(
    request: Request, client: str, path: PathText, who: Viewer = Depends(viewer)
) -> Response:
    """The versions of ``path`` across the client's snapshots: each distinct content
    once, newest first, each with its snapshots and their downloads."""
    path = checked_path(exact_path(request, path))
    Access(who.grant, READ).client(client, missing=UnknownResource(kind="client", name=client))
    with use(request) as ctx:
        found = file_versions(ctx, client=client, path=path)
    versions = []
    for version in found.versions:
        doc = version.to_json()
        doc["mtime"] = when(version.mtime_ns)
        doc["held_in"] = [
            {
                "id": s["id"],
                "time": s["time"],
                "page": link("snapshots", s["id"], "file", path=path),
                "download": link("api", "v1", "snapshots", s["id"], "file", path=path)
                if version.type in CONTENT_TYPES and is_text(path)
                else None,
            }
            for s in version.snapshots
        ]
        versions.append(doc)
    return render(
        request,
        "versions.html",
        who,
        title=f"Versions of {shown(path)} on {client}",
        crumbs=[(client, url_path("clients", client)), (f"versions of {shown(path)}", "")],
        client=client,
        client_href=url_path("clients", client),
        path=shown(path),
        versions=versions,
    )


def restore_targets(who: Viewer, clients: list[str]) -> list[str]:
    """The clients whose machines the viewer may restore to (``snapshots.restore``)."""
    return [name for name in sorted(clients) if who.may(RESTORE, name)]


@router.get("/snapshots/{ref}/restore", response_class=HTMLResponse)
def restore_form(
    request: Request, ref: str, path: PathText = "/", who: Viewer = Depends(viewer)
) -> Response:
    """The restore form: which part of the snapshot, onto which client, where."""
    with use(request) as ctx:
        pool, found = resolve_visible(ctx, who.grant, ref, RESTORE)
        clients = list(ctx.inventory.clients)
    return _restore_page(
        request, who, found, pool, clients, path=path, client=found.client, target=""
    )


def _restore_page(
    request: Request,
    who: Viewer,
    found: Snapshot,
    pool: str,
    clients: list[str],
    *,
    path: str,
    client: str,
    target: str,
    problem: str = "",
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "restore.html",
        who,
        status_code=status_code,
        title=f"Restore from {found.client} {found.id[:12]}",
        crumbs=[*crumbs(found, "/"), ("restore", "")],
        snapshot=snapshot_facts(found, pool),
        client_href=url_path("clients", found.client),
        action=link("snapshots", found.id, "restore"),
        targets=restore_targets(who, clients),
        path=path,
        client=client,
        target=target,
        problem=problem,
    )


@router.post("/snapshots/{ref}/restore", response_class=HTMLResponse)
async def restore_post(request: Request, ref: str, who: Viewer = Depends(viewer)) -> Response:
    """Queue the restore job, as ``POST /api/v1/snapshots/{s}/restore`` does (the same
    permission on both clients, the same parameters), then its job page; a bad target
    shows on the form again, with what is wrong."""
    form = await checked_form(request, who)
    fields = {key: str(form.get(key) or "") for key in ("path", "client", "target")}
    return await run_in_threadpool(_restore, request, who, ref, fields)


def _restore(request: Request, who: Viewer, ref: str, fields: dict[str, str]) -> Response:
    path = fields["path"] or "/"
    target = fields["target"].strip()
    with use(request) as ctx:
        pool, found = resolve_visible(ctx, who.grant, ref, RESTORE)
        clients = list(ctx.inventory.clients)
    client = fields["client"] or found.client
    try:
        if len(path) > MAX_TEXT or len(target) > MAX_TEXT or len(client) > MAX_CLIENT:
            raise UsageError(message="a path, target or client name that long is refused")
        if not target:
            raise UsageError(message="say where on the client's machine to restore to")
        Access(who.grant, RESTORE).client(
            client, missing=UnknownResource(kind="client", name=client)
        )
        params: dict[str, Any] = {
            "snapshot": found.id,
            "target": target,
            "path": path,
            "include": [],
            "exclude": [],
        }
        with use(request) as ctx:
            queued = queue_job(ctx, kind="restore", target=client, params=params)
    except (UsageError, PermissionDenied, UnknownResource) as error:
        return _restore_page(
            request,
            who,
            found,
            pool,
            clients,
            path=path,
            client=client,
            target=target,
            problem=str(error),
            status_code=error.http_status,
        )
    return RedirectResponse(url_path("jobs", str(queued.id)), status_code=303)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    a: Annotated[str, Query(max_length=MAX_CLIENT + 10)],
    b: Annotated[str, Query(max_length=MAX_CLIENT + 10)] = "",
    kind: str = "",
    page: PageNumber = 1,
    who: Viewer = Depends(viewer),
) -> Response:
    """What changed from snapshot ``a`` to ``b`` (as ``costor diff``), grouped by kind
    of change, a page at a time; without ``b``, the choice of the snapshot to compare
    with (the same client's)."""
    if kind and kind not in CHANGE_KINDS:
        raise UsageError(message=f"kind is one of {', '.join(CHANGE_KINDS)}")
    with use(request) as ctx:
        pool_a, first = resolve_visible(ctx, who.grant, a, READ)
        if not b:
            others = [s for _p, s in list_snapshots(ctx, client=first.client) if s.id != first.id]
            return _compare_choice(request, who, first, pool_a, others)
        pool_b, second = resolve_visible(ctx, who.grant, b, READ)
        difference = diff_snapshots(ctx, first=first.id, second=second.id)
    counts = difference.counts()
    order = {change: i for i, change in enumerate(CHANGE_KINDS)}
    changes = [c for c in difference.changes if not kind or c.change == kind]
    changes.sort(key=lambda c: order[c.change])  # stable: tree order within a kind

    def page_link(number: int) -> str:
        return link(
            "compare", a=first.id, b=second.id, page=number, **({"kind": kind} if kind else {})
        )

    pager = paged(len(changes), page, page_link)
    start = (pager.page - 1) * PAGE_SIZE
    groups: list[tuple[str, str, list[dict[str, Any]]]] = []
    for change in changes[start : start + PAGE_SIZE]:
        if not groups or groups[-1][0] != change.change:
            groups.append((change.change, CHANGE_LABELS[change.change], []))
        groups[-1][2].append(_change_row(change, first, second))
    filters = [
        (
            CHANGE_LABELS[name],
            counts[name],
            link("compare", a=first.id, b=second.id, kind=name),
            kind == name,
        )
        for name in CHANGE_KINDS
    ]
    return render(
        request,
        "compare.html",
        who,
        title=f"Compare {first.id[:12]} with {second.id[:12]}",
        crumbs=[
            (first.client, url_path("clients", first.client)),
            (f"snapshot {first.id[:12]}", url_path("snapshots", first.id)),
            (f"compared with {second.id[:12]}", ""),
        ],
        first=snapshot_facts(first, pool_a),
        second=snapshot_facts(second, pool_b),
        first_href=url_path("snapshots", first.id),
        second_href=url_path("snapshots", second.id),
        groups=groups,
        filters=filters,
        all_link=link("compare", a=first.id, b=second.id),
        kind=kind,
        total=len(difference.changes),
        pager=pager,
        swap=link("compare", a=second.id, b=first.id),
    )


def _change_row(change: Difference, first: Snapshot, second: Snapshot) -> dict[str, Any]:
    """One change as a row: its path links to the entry in the snapshot that holds it."""
    holder = first if change.change == "removed" else second
    page = "tree" if change.type == "dir" else "file"
    return {
        "path": change.path,
        "type": change.type,
        "before": change.size_before if change.change != "added" else None,
        "after": change.size_after if change.change != "removed" else None,
        "href": link("snapshots", holder.id, page, path=change.path),
    }


def _compare_choice(
    request: Request, who: Viewer, first: Snapshot, pool: str, others: list[Snapshot]
) -> Response:
    return render(
        request,
        "compare_choose.html",
        who,
        title=f"Compare {first.id[:12]} with…",
        crumbs=[
            (first.client, url_path("clients", first.client)),
            (f"snapshot {first.id[:12]}", url_path("snapshots", first.id)),
            ("compare", ""),
        ],
        first=snapshot_facts(first, pool),
        first_href=url_path("snapshots", first.id),
        others=[
            {"id": s.id, "time": s.time, "newer": s.time > first.time} for s in reversed(others)
        ],
    )


__all__ = ["PAGE_SIZE", "router"]
