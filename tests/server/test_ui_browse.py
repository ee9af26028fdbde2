"""The web UI's snapshot browser against a real `costor serve`: directories a page at a
time, a file's details and download, the versions of a path (each content once), the
comparison of two snapshots, the restore form (CSRF, bad targets, a queued job that
runs), what an end user may see (another client's snapshot is a 404 page, by id, by
prefix and by name), a 20,000-entry directory, and names that try to break the HTML
or the links."""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from ui_site import Page, Served, make_site

pytestmark = pytest.mark.timeout(300)

BIG = 20_000
HOSTILE = [
    "<script>alert(1)&lt;.txt",
    "<img src=x onerror=alert(1)>",
    'quote"d.txt',
    "100%.txt",
    "hash#tag.txt",
    "q?x=1&y=2.txt",
    "ünïcødé ☃.txt",
    "new\nline.txt",
    "plus+and space.txt",
]
NOT_UTF8 = b"latin-\xe9t\xe9.txt"  # a name that is not UTF-8 (Latin-1 bytes)
_ROW = re.compile(
    r'<tr data-name="([^"]*)" data-type="(\w+)">\s*<td class="name"><a href="([^"]+)"'
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """alpha with hostile names and a 20,000-entry directory, backed up twice (its
    file.txt changed in between); beta once."""
    root = tmp_path_factory.mktemp("browse")
    site = make_site(root)
    alpha = root / "src-alpha"
    (alpha / "weird").mkdir()
    for name in HOSTILE:
        (alpha / "weird" / name).write_bytes(f"content of {name}".encode())
    with open(os.fsencode(alpha / "weird") + b"/" + NOT_UTF8, "wb") as odd:
        odd.write(b"not text")
    os.mkdir(os.fsencode(alpha / "weird") + b"/dir-\xff")
    (alpha / "big").mkdir()
    for i in range(BIG):
        (alpha / "big" / f"f-{i:05d}").touch()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta"):
            assert site.cli("backup", name).code == 0
        (alpha / "file.txt").write_text("alpha, changed\n")
        assert site.cli("backup", "alpha").code == 0
        yield site


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_LOGIN_POLICY", "user_failures=1000,address_failures=1000")
        process, base_url = start_serve(site)
    try:
        yield Served(site, base_url, process)
    finally:
        stop_serve(process)


def src(served: Served, client: str = "alpha") -> str:
    """Where the client's files are, which is their path in its snapshots."""
    return str(served.site.root / f"src-{client}")


def snapshot_ids(page: Page, client: str) -> list[str]:
    """The client's snapshot ids, oldest first (the API, with the page's session)."""
    answer = page.get(f"/api/v1/snapshots?client={client}")
    assert answer.status_code == 200, answer.text
    return [s["id"] for s in answer.json()]


def rows(text: str) -> list[tuple[str, str, str]]:
    """(name, type, link) of each row of the entries table."""
    return [
        (html.unescape(name), kind, html.unescape(href)) for name, kind, href in _ROW.findall(text)
    ]


def attribute(text: str, element: str, name: str = "href") -> str:
    """An attribute of the element of that id (it follows the id), unescaped."""
    found = re.search(rf'id="{element}" {name}="([^"]+)"', text)
    assert found is not None, element
    return html.unescape(found.group(1))


def test_an_admin_browses_a_snapshot_directories_first(served: Served) -> None:
    page = served.page("ada")
    newest = snapshot_ids(page, "alpha")[-1]
    root = page.get("/snapshots/alpha:latest")
    assert root.status_code == 200, root.text
    assert newest[:12] in root.text and 'href="/clients/alpha"' in root.text
    for element in ('id="entries"', 'id="download-zip"', 'id="download-tarzst"', 'id="restore"'):
        assert element in root.text
    backed_up = re.search(r'id="snapshot-paths"><a href="([^"]+)"', root.text)
    assert backed_up is not None
    assert (
        html.unescape(backed_up.group(1)) == f"/snapshots/{newest}/tree?path={quote(src(served))}"
    )
    top = src(served).split("/")[1]
    assert [(name, kind) for name, kind, _h in rows(root.text)] == [(top, "dir")]
    source = page.get(f"/snapshots/{newest}/tree?path={src(served)}")
    assert source.status_code == 200, source.text
    listed = rows(source.text)
    assert [name for name, _k, _h in listed] == ["big", "docs", "weird", "file.txt"]
    docs = dict((name, href) for name, _k, href in listed)["docs"]
    assert docs == f"/snapshots/{newest}/tree?path={quote(src(served))}/docs"
    inside = page.get(docs)
    assert inside.status_code == 200
    assert [name for name, _k, _h in rows(inside.text)] == [f"note-{i}.txt" for i in range(3)]
    assert 'aria-label="Breadcrumb"' in inside.text and ">docs</span>" in inside.text
    # each directory on the way is a breadcrumb link
    assert f'href="/snapshots/{newest}/tree?path=/{top}"' in inside.text


def test_the_archive_links_download_the_directory(served: Served) -> None:
    page = served.page("ada")
    listing = page.get(f"/snapshots/alpha:latest/tree?path={src(served)}/docs")
    href = attribute(listing.text, "download-zip")
    assert "format=zip" in href and f"path={quote(src(served))}/docs" in href
    archive = page.get(href)
    assert archive.status_code == 200
    assert archive.content[:2] == b"PK"
    tarzst = attribute(listing.text, "download-tarzst")
    assert page.get(tarzst).content[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame


def test_a_file_page_shows_its_details_and_downloads(served: Served) -> None:
    page = served.page("ada")
    newest = snapshot_ids(page, "alpha")[-1]
    file_txt = f"{src(served)}/file.txt"
    details = page.get(f"/snapshots/{newest}/file?path={file_txt}")
    assert details.status_code == 200, details.text
    assert re.search(r'data-testid="content-id">[0-9a-f]{32}<', details.text)
    assert "-rw-" in details.text and 'id="versions"' in details.text
    assert (
        attribute(details.text, "restore") == f"/snapshots/{newest}/restore?path={quote(file_txt)}"
    )
    download = re.search(r'id="download-file" href="([^"]+)"', details.text)
    assert download is not None
    assert page.get(html.unescape(download.group(1))).text == "alpha, changed\n"
    # A directory's "file page" is its listing; a file's listing is its file page.
    docs = f"{src(served)}/docs"
    assert (
        page.get(f"/snapshots/{newest}/file?path={docs}")
        .headers["location"]
        .endswith(f"tree?path={quote(docs)}")
    )
    assert (
        page.get(f"/snapshots/{newest}/tree?path={file_txt}")
        .headers["location"]
        .endswith(f"file?path={quote(file_txt)}")
    )
    assert page.get(f"/snapshots/{newest}/file?path=/no-such").status_code == 404
    assert page.get(f"/snapshots/{newest}/file?path=/../etc").status_code == 400


def test_previous_versions_show_each_content_once(served: Served) -> None:
    page = served.page("ada")
    first, second = snapshot_ids(page, "alpha")
    changed = page.get(f"/clients/alpha/versions?path={src(served)}/file.txt")
    assert changed.status_code == 200, changed.text
    assert 'id="versions-table"' in changed.text
    assert changed.text.count("data-content-id=") == 2
    # newest first: the newest version is held in the second snapshot
    assert changed.text.index(second[:12]) < changed.text.index(first[:12])
    downloads = re.findall(r'href="([^"]+)" download data-testid="version-download"', changed.text)
    assert [page.get(html.unescape(d)).text for d in downloads] == ["alpha, changed\n", "alpha\n"]
    same = page.get(f"/clients/alpha/versions?path={src(served)}/docs/note-0.txt")
    assert same.text.count("data-content-id=") == 1
    assert first[:12] in same.text and second[:12] in same.text


def test_compare_shows_what_changed(served: Served) -> None:
    page = served.page("ada")
    first, second = snapshot_ids(page, "alpha")
    choose = page.get(f"/compare?a={first}")
    assert choose.status_code == 200 and f'value="{second}"' in choose.text
    compared = page.get(f"/compare?a={first}&b={second}")
    assert compared.status_code == 200, compared.text
    assert 'data-change="modified"' in compared.text
    assert f'data-path="{src(served)}/file.txt"' in compared.text
    assert 'data-change="added"' not in compared.text
    assert page.get(f"/compare?a={first}&b={second}&kind=added").text.count("data-path=") == 0
    assert page.get(f"/compare?a={first}&b={second}&kind=bogus").status_code == 400
    same = page.get(f"/compare?a={second}&b={second}")
    assert 'id="no-changes"' in same.text


def test_a_large_comparison_is_shown_a_page_at_a_time(served: Served) -> None:
    """alpha against beta: all of alpha (its 20,000-entry directory too) removed."""
    page = served.page("ada")
    alpha, beta = snapshot_ids(page, "alpha")[-1], snapshot_ids(page, "beta")[0]
    compared = page.get(f"/compare?a={alpha}&b={beta}")
    assert compared.status_code == 200
    assert compared.text.count("data-path=") == 500
    assert "Page 1 of " in compared.text and 'rel="next"' in compared.text
    added = page.get(f"/compare?a={alpha}&b={beta}&kind=added")
    assert 'data-change="removed"' not in added.text
    assert f'data-path="{src(served, "beta")}/docs/note-0.txt"' in added.text


def test_an_end_user_sees_only_their_own_clients_snapshots(served: Served) -> None:
    admin = served.page("ada")
    beta = snapshot_ids(admin, "beta")[0]
    alpha = snapshot_ids(admin, "alpha")[-1]
    eve = served.page("eve")
    assert eve.get("/snapshots/alpha:latest").status_code == 200
    assert eve.get(f"/snapshots/{alpha[:10]}").status_code == 200
    for url in (
        f"/snapshots/{beta}",
        f"/snapshots/{beta[:8]}",
        "/snapshots/beta:latest",
        f"/snapshots/{beta}/tree?path={src(served, 'beta')}",
        f"/snapshots/{beta}/file?path={src(served, 'beta')}/file.txt",
        f"/snapshots/{beta}/restore",
        f"/clients/beta/versions?path={src(served, 'beta')}/file.txt",
        f"/compare?a={alpha}&b={beta}",
        f"/compare?a={beta}",
    ):
        answer = eve.get(url)
        assert answer.status_code == 404, url
        assert "nothing you may see" in answer.text
        assert beta[:8] not in answer.text.replace(url, "")


def test_a_user_without_snapshots_read_may_not_browse(served: Served) -> None:
    answer = served.page("aud").get("/snapshots/alpha:latest")
    assert answer.status_code == 403
    assert "Not allowed" in answer.text


def test_the_restore_form_queues_a_restore_job_that_runs(served: Served, tmp_path: Path) -> None:
    eve = served.page("eve")
    newest = snapshot_ids(eve, "alpha")[-1]
    docs = f"{src(served)}/docs"
    form = eve.get(f"/snapshots/{newest}/restore?path={docs}")
    assert form.status_code == 200, form.text
    assert re.findall(r'<option value="([^"]+)"', form.text) == ["alpha"]  # hers only
    assert f'name="path" value="{docs}"' in form.text
    target = tmp_path / "restored"
    queued = eve.post(
        f"/snapshots/{newest}/restore",
        {"path": docs, "client": "alpha", "target": str(target)},
    )
    assert queued.status_code == 303, queued.text
    job_id = int(queued.headers["location"].removeprefix("/jobs/"))
    job = eve.get(f"/api/v1/jobs/{job_id}").json()
    assert (job["kind"], job["target"]) == ("restore", "alpha")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(target.rglob("note-2.txt")):
        time.sleep(0.2)
    restored = list(target.rglob("note-2.txt"))
    assert restored and restored[0].read_text() == "alpha note 2\n"


def test_an_operator_restores_onto_another_clients_machine(served: Served, tmp_path: Path) -> None:
    otto = served.page("otto")
    newest = snapshot_ids(otto, "alpha")[-1]
    form = otto.get(f"/snapshots/{newest}/restore")
    assert re.findall(r'<option value="([^"]+)"', form.text) == ["alpha", "beta"]
    assert '<option value="alpha" selected>' in form.text  # the snapshot's own by default
    target = tmp_path / "onto-beta"
    file_txt = f"{src(served)}/file.txt"
    queued = otto.post(
        f"/snapshots/{newest}/restore", {"path": file_txt, "client": "beta", "target": str(target)}
    )
    assert queued.status_code == 303, queued.text
    job = otto.get(f"/api/v1/jobs/{queued.headers['location'].removeprefix('/jobs/')}").json()
    assert (job["kind"], job["target"]) == ("restore", "beta")
    assert job["params"]["snapshot"] == newest and job["params"]["path"] == file_txt


def test_the_restore_form_needs_its_csrf_token_and_a_good_target(served: Served) -> None:
    eve = served.page("eve")
    newest = snapshot_ids(eve, "alpha")[-1]
    before = len(eve.get("/api/v1/jobs?kind=restore").json())
    forged = eve.http.post(
        f"/snapshots/{newest}/restore", data={"path": "/", "target": "/tmp/forged"}
    )
    assert forged.status_code == 403
    for fields, status in (
        ({"target": "relative/dir"}, 400),
        ({"target": "/"}, 400),
        ({"target": ""}, 400),
        ({"target": "/tmp/x", "client": "beta"}, 404),  # not hers: as if it did not exist
    ):
        refused = eve.post(f"/snapshots/{newest}/restore", {"path": "/", **fields})
        assert refused.status_code == status, (fields, refused.text)
        assert 'id="restore-problem"' in refused.text and 'id="restore-form"' in refused.text
    assert len(eve.get("/api/v1/jobs?kind=restore").json()) == before


def test_a_20000_entry_directory_is_shown_a_page_at_a_time(served: Served) -> None:
    page = served.page("ada")
    first = page.get(f"/snapshots/alpha:latest/tree?path={src(served)}/big")
    assert first.status_code == 200
    listed = rows(first.text)
    assert len(listed) == 500
    assert listed[0][0] == "f-00000" and listed[-1][0] == "f-00499"
    assert "Page 1 of 40" in first.text and 'rel="next"' in first.text
    following = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert following is not None
    second = rows(page.get(html.unescape(following.group(1))).text)
    assert second[0][0] == "f-00500"
    last = page.get(f"/snapshots/alpha:latest/tree?path={src(served)}/big&page=999")
    assert rows(last.text)[-1][0] == "f-19999" and 'rel="next"' not in last.text
    filtered = page.get(f"/snapshots/alpha:latest/tree?path={src(served)}/big&q=f-1999")
    assert len(rows(filtered.text)) == 10 and "Page 1 of" not in filtered.text


def test_hostile_names_are_escaped_and_their_links_work(served: Served) -> None:
    page = served.page("ada")
    listing = page.get(f"/snapshots/alpha:latest/tree?path={src(served)}/weird")
    assert listing.status_code == 200
    assert "<script>alert" not in listing.text and "<img" not in listing.text
    listed = rows(listing.text)
    odd = [entry for entry in listed if entry[0] not in HOSTILE]
    assert sorted(name for name, _k, _h in listed if name in HOSTILE) == sorted(HOSTILE)
    assert [name for name, _k, _h in odd] == ["dir-\\xff", "latin-\\xe9t\\xe9.txt"]
    inside = page.get(odd[0][2])  # its link keeps the raw bytes
    assert inside.status_code == 200, inside.text
    assert "dir-\\xff" in inside.text and "This directory is empty." in inside.text
    assert 'id="download-zip"' not in inside.text  # the API's query takes text only
    details = page.get(odd[1][2])
    assert details.status_code == 200, details.text
    assert 'data-testid="file-size">8 B' in details.text
    assert 'id="download-file"' not in details.text  # the API's query takes text only
    odd_versions = page.get(attribute(details.text, "versions"))
    assert odd_versions.status_code == 200 and odd_versions.text.count("data-content-id=") == 1
    listed = [entry for entry in listed if entry[0] in HOSTILE]
    for name, kind, href in listed:
        assert kind == "file"
        assert href.endswith(f"path={quote(src(served))}/weird/{quote(name, safe='')}")
        details = page.get(href)
        assert details.status_code == 200, name
        assert "<script>alert" not in details.text and "<img" not in details.text
        heading = re.search(r"<h1>(.*?)</h1>", details.text, re.DOTALL)
        assert heading is not None and html.unescape(heading.group(1)) == name
        download = re.search(r'id="download-file" href="([^"]+)"', details.text)
        assert download is not None
        assert page.get(html.unescape(download.group(1))).content == f"content of {name}".encode()
        versions = re.search(r'id="versions" href="([^"]+)"', details.text)
        assert versions is not None
        assert page.get(html.unescape(versions.group(1))).text.count("data-content-id=") == 1
