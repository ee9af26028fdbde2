"""The web UI end to end, as a person uses it: Debian's Chromium (Playwright) against a
real ``costor serve``, axe-core on every page, a screenshot of each (see e2e.py).

The flows of issue 21: an admin backs a client up from its page and watches the job's
progress bar move, and the dashboard turn from "never backed up" to healthy; browses a
snapshot, opens a file's previous versions and downloads a directory as .zip and
.tar.zst, whose bytes are the source's; pages through a directory of 20,000 entries; an
end user sees only their client, gets the 404 page for another's snapshot, restores onto
their own machine, and the audit log shows what they did; and the pages without
JavaScript.

The tests run in order and share the module's site: the backup test is the one that
takes gamma from "never backed up" to backed up.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import zstandard
from e2e import HOSTILE, UI, E2ESite

pytestmark = [pytest.mark.timeout(300), pytest.mark.browser]

TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")


def snapshots_of(site: E2ESite, client: str) -> list[dict[str, Any]]:
    """The client's snapshots, oldest first (as `costor snapshots --json`)."""
    listed = site.site.cli("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    return sorted((s for s in listed.json() if s["client"] == client), key=lambda s: str(s["time"]))


def tree(snapshot: str, path: Path | str) -> str:
    return f"/snapshots/{snapshot}/tree?{urlencode({'path': str(path)})}"


def client_row(ui: UI, client: str) -> Any:
    return ui.page.locator(f"#clients [data-client='{client}']")


# --- logging in ------------------------------------------------------------------------


def test_the_login_page_refuses_a_wrong_password_then_lets_the_admin_in(ui: UI) -> None:
    ui.goto("/")
    assert "/login?next=" in ui.page.url  # a page without a session: the login first
    ui.check("login")
    ui.page.fill("#user", "ada")
    ui.page.fill("#password", "not the password")
    ui.page.click("form[action='/login'] button[type=submit]")
    problem = ui.page.locator(".problem")
    problem.wait_for()
    assert "Wrong user name or password" in problem.inner_text()
    ui.check("login-failed")
    ui.log_in("ada")
    assert ui.page.locator("h1").inner_text() == "Dashboard"
    assert "ada" in ui.page.locator("header").inner_text()


# --- backing up and watching the job ---------------------------------------------------------


def test_an_admin_backs_up_a_client_and_watches_its_progress(ui: UI, served: E2ESite) -> None:
    ui.log_in("ada")
    gamma = client_row(ui, "gamma")
    assert "never backed up" in gamma.inner_text().lower(), gamma.inner_text()
    assert ui.page.locator("#attention").get_by_text("gamma").count() >= 1
    ui.check("dashboard", other_screens=True)

    ui.goto("/clients/gamma")
    ui.check("client-never-backed-up")
    with ui.page.expect_navigation():
        ui.page.click("#backup-now")
    assert re.search(r"/jobs/\d+$", ui.page.url), ui.page.url

    job = ui.page.url.rsplit("/", 1)[1]
    # Meanwhile, the dashboard in another tab: its running jobs refresh themselves.
    dashboard = ui.page.context.new_page()
    dashboard.goto(ui.url("/"))
    dashboard_bar = dashboard.locator(f"#running-jobs [data-job='{job}'] progress")
    loaded_with = dashboard_bar.first.get_attribute("value") if dashboard_bar.count() else None
    dashboard_bars: set[str] = set()

    # The progress bar, as the page shows it while the job runs (pushed by SSE), and
    # the time left, which never says 0 s while work remains.
    values: list[str] = []
    etas: list[str] = []
    state = ""
    shot_running = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        value, state, eta = ui.page.evaluate(
            """() => {
                const text = (selector) => {
                    const found = document.querySelector(selector);
                    return found ? found.innerText.trim() : '';
                };
                const bar = document.querySelector('#job-progress progress');
                return [bar ? bar.getAttribute('value') : null, text('#job-state'),
                        text('#job-progress [data-testid=eta]')];
            }"""
        )
        if value is not None and (not values or values[-1] != value):
            values.append(value)
            print(f"progress {time.monotonic():.2f}: {value} % {state}, time left {eta!r}")
        if state == "running" and eta:
            etas.append(eta)
        if dashboard_bar.count():
            dashboard_bars.add(dashboard_bar.first.get_attribute("value") or "")
        if not shot_running and state == "running" and len(values) >= 2:
            ui.check("job-running")  # mid-job: the bar, the rate and the time left
            shot_running = True
        if any(word in state for word in TERMINAL):
            break
        time.sleep(0.05)
    assert "succeeded" in state, (state, ui.page.locator("#job-log").inner_text())
    assert len(set(values)) >= 3, f"the progress bar showed only {values}"
    assert [float(v) for v in values] == sorted(float(v) for v in values), values
    # The dashboard showed the job running with its progress, updated on its own
    # (polled) from what the page had when it loaded.
    assert dashboard_bars - {"", loaded_with}, (loaded_with, dashboard_bars)
    dashboard.close()
    assert etas and not any(re.fullmatch(r"0(\.0+)? ?s", eta) for eta in etas), etas
    ui.check("job")

    ui.goto("/")
    gamma = client_row(ui, "gamma")
    text = gamma.inner_text().lower()
    assert "never backed up" not in text and "ok" in text, text
    ui.goto("/clients/gamma")
    assert ui.page.locator(".timeline a").count() == 1
    assert ui.page.locator("#snapshots tr[data-snapshot]").count() == 1
    ui.axe("client-gamma")
    ui.goto("/jobs")
    assert ui.page.locator("#jobs [data-job]").count() >= 1
    ui.check("jobs")


# --- browsing, previous versions, a directory as .zip and .tar.zst -----------------------------------------


def test_an_admin_browses_a_snapshot_and_downloads_a_directory(
    ui: UI, served: E2ESite, tmp_path: Path
) -> None:
    ui.log_in("ada")
    first, latest = snapshots_of(served, "alpha")
    source = served.sources["alpha"]

    ui.goto("/clients/alpha")
    rows = ui.page.locator("#snapshots tr[data-snapshot]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.snapshot)") == [
        latest["id"],
        first["id"],
    ]  # newest first
    assert ui.page.locator(".timeline a").count() == 2
    ui.check("client")
    with ui.page.expect_navigation():
        rows.first.locator(f"a[href='/snapshots/{latest['id']}']").click()
    assert ui.page.locator("#snapshot-id").get_attribute("title") == latest["id"]
    ui.check("snapshot")
    ui.goto(tree(latest["id"], source))
    entries = ui.page.locator("#entries tbody tr[data-name]")
    names = entries.evaluate_all("rows => rows.map(r => r.dataset.name)")
    # Directories first, then by name; a name that is markup is a name like any other.
    assert names == ["docs", HOSTILE, "file.txt"], names
    with ui.page.expect_navigation():
        ui.page.locator("#entries tbody tr[data-name]").nth(1).locator("a").click()
    assert ui.page.locator("h1").inner_text() == HOSTILE
    with ui.page.expect_download() as hostile:
        ui.page.click("#download-file")
    assert Path(hostile.value.path()).read_bytes() == b"a name that is markup\n"
    ui.goto(tree(latest["id"], source))
    with ui.page.expect_navigation():
        ui.page.click("#entries tr[data-name='docs'] a")
    ui.check("directory")
    with ui.page.expect_navigation():
        ui.page.click("#entries tr[data-name='note-0.txt'] a")
    assert ui.page.locator("#current-path").inner_text().endswith("/docs/note-0.txt")
    ui.check("file")

    with ui.page.expect_navigation():
        ui.page.click("#versions")
    versions = ui.page.locator("#versions-table tbody tr")
    assert versions.count() == 2  # the two contents of note-0.txt, each once
    ui.check("versions")
    with ui.page.expect_download() as newest:
        versions.first.locator("[data-testid=version-download]").first.click()
    assert Path(newest.value.path()).read_bytes() == (source / "docs/note-0.txt").read_bytes()

    ui.goto(tree(latest["id"], source / "docs"))
    with ui.page.expect_download() as download:
        ui.page.click("#download-zip")
    assert download.value.suggested_filename.endswith(".zip")
    archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    got = {
        info.filename.split("docs/", 1)[-1]: archive.read(info)
        for info in archive.infolist()
        if not info.is_dir()
    }
    want = {
        str(path.relative_to(source / "docs")): path.read_bytes()
        for path in (source / "docs").rglob("*")
        if path.is_file()
    }
    assert got == want
    with ui.page.expect_download() as download:
        ui.page.click("#download-tarzst")
    assert download.value.suggested_filename.endswith(".tar.zst")
    with (
        zstandard.open(download.value.path(), "rb") as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        got = {}
        for member in tar:
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                got[member.name.split("docs/", 1)[-1]] = extracted.read()
    assert got == want

    ui.goto(f"/snapshots/{first['id']}")
    with ui.page.expect_navigation():
        ui.page.click("#compare")
    assert ui.page.locator("#compare-with").input_value() == latest["id"]
    ui.check("compare-choose")
    with ui.page.expect_navigation():
        ui.page.click("#compare-submit")
    changed = ui.page.locator("table.changes tr[data-path]").evaluate_all(
        "rows => rows.map(r => [r.dataset.path, r.cells[1].innerText.trim()])"
    )
    files = [path for path, kind in changed if kind != "dir"]
    assert files == [str(source / "docs" / "note-0.txt")], changed
    ui.check("compare")
    ui.goto(f"/snapshots/{latest['id']}/restore?{urlencode({'path': str(source)})}")
    assert ui.page.locator("#restore-client").input_value() == "alpha"
    ui.check("restore")


def test_a_directory_of_20000_entries_is_paged(ui: UI, served: E2ESite) -> None:
    ui.log_in("ada")
    beta = snapshots_of(served, "beta")[0]
    big = served.sources["beta"] / "big"
    started = time.monotonic()
    ui.goto(tree(beta["id"], big))
    took = time.monotonic() - started
    rows = ui.page.locator("#entries tbody tr[data-name]")
    assert rows.count() == 500
    assert rows.first.get_attribute("data-name") == "entry-00000"
    assert "Page 1 of 40" in ui.page.locator("#pager").inner_text()
    print(f"a page of the 20,000-entry directory loaded in {took:.2f} s")
    ui.check("big-directory", full_page=False)  # the top: the pager and the filter
    with ui.page.expect_navigation():
        ui.page.click("#pager [data-testid=pager-next]")
    assert rows.first.get_attribute("data-name") == "entry-00500"
    ui.page.fill("#filter-q", "19999")
    with ui.page.expect_navigation():
        ui.page.click("#filter button[type=submit]")
    names = rows.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == ["entry-19999"]


# --- an end user --------------------------------------------------------------------------------


def test_an_end_user_sees_only_their_client_and_the_audit_log_shows_it(
    ui: UI, served: E2ESite, open_ui: Callable[..., UI], tmp_path: Path
) -> None:
    ui.log_in("eve")
    rows = ui.page.locator("#clients [data-client]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.client)") == ["alpha"]
    assert "Audit log" not in ui.page.locator("header nav").inner_text()
    ui.check("dashboard-end-user")

    beta = snapshots_of(served, "beta")[-1]["id"]
    for path in (f"/snapshots/{beta}", f"/snapshots/{beta[:12]}", "/clients/beta"):
        response = ui.goto(path)
        assert response.status == 404, path
        assert ui.page.locator("h1").inner_text() == "Not found"
        assert "beta" not in ui.page.locator("main").inner_text()
    ui.check("not-found")

    alpha = snapshots_of(served, "alpha")[-1]
    source = served.sources["alpha"]
    ui.goto(f"/snapshots/{alpha['id']}/file?{urlencode({'path': str(source / 'file.txt')})}")
    with ui.page.expect_download() as download:
        ui.page.click("#download-file")
    assert Path(download.value.path()).read_bytes() == b"alpha\n"

    # Restore a directory onto their own machine (the only one offered), into a new
    # directory: a job, followed on its page until it succeeded.
    ui.goto(tree(alpha["id"], source / "docs"))
    with ui.page.expect_navigation():
        ui.page.click("#restore")
    offered = ui.page.locator("#restore-client option").evaluate_all(
        "options => options.map(o => o.value)"
    )
    assert offered == ["alpha"]
    ui.page.fill("#restore-target", str(tmp_path / "restored"))
    with ui.page.expect_navigation():
        ui.page.click("#restore-submit")
    assert re.search(r"/jobs/\d+$", ui.page.url), ui.page.locator("main").inner_text()
    ui.page.wait_for_function(
        "() => /succeeded|failed|cancelled|interrupted/"
        ".test(document.querySelector('#job-state').innerText)",
        timeout=60_000,
    )
    assert "succeeded" in ui.page.locator("#job-state").inner_text()
    ui.check("job-restore")
    restored = {p.name: p.read_bytes() for p in (tmp_path / "restored").rglob("note-*.txt")}
    assert restored == {p.name: p.read_bytes() for p in (source / "docs").glob("note-*.txt")}, (
        sorted((tmp_path / "restored").rglob("*"))
    )
    assert ui.goto("/audit").status == 403
    ui.log_out()

    auditor = open_ui()
    auditor.log_in("aud")
    auditor.goto("/audit?" + urlencode({"actor": "user:eve"}))
    records = auditor.page.locator("#audit tbody tr[data-record]").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    assert {row[2] for row in records} == {"user:eve"}, records  # the actor filter
    actions = [row[3] for row in records]
    print("eve's audit records:", actions)
    assert {"login", "download", "jobs.add", "logout"} <= set(actions), actions
    assert "file.txt" in auditor.page.locator("#audit").inner_text()
    auditor.page.click("#verify-chain")  # htmx puts the check's outcome under the button
    auditor.page.locator("#chain-check #chain-result").wait_for()
    assert auditor.page.locator("#chain-result").get_attribute("data-intact") == "true"
    auditor.check("audit")


# --- without JavaScript ---------------------------------------------------------------------


def test_the_pages_work_without_javascript(open_ui: Callable[..., UI], served: E2ESite) -> None:
    """Plain links and forms: log in, back up from the client's page, see the job end
    (its page reloads itself while the job runs: no live updates without scripts),
    browse and download."""
    ui = open_ui(javascript=False)
    ui.log_in("otto")  # an operator
    assert ui.page.locator("#clients [data-client]").count() == 3
    ui.goto("/clients/beta")
    with ui.page.expect_navigation():
        ui.page.click("#backup-now")
    assert re.search(r"/jobs/\d+$", ui.page.url), ui.page.locator("main").inner_text()
    # The running job's page reloads itself (a refresh in <noscript>) until it ended.
    ended = ui.page.locator("#job-state").filter(has_text=re.compile("|".join(TERMINAL)))
    ended.wait_for(timeout=60_000)
    assert "succeeded" in ui.page.locator("#job-state").inner_text()

    latest = snapshots_of(served, "beta")[-1]
    ui.goto("/clients/beta")
    with ui.page.expect_navigation():
        ui.page.click(f"#snapshots a[href='/snapshots/{latest['id']}']")
    ui.goto(tree(latest["id"], served.sources["beta"]))
    with ui.page.expect_navigation():
        ui.page.click("#entries tr[data-name='file.txt'] a")
    with ui.page.expect_download() as download:
        ui.page.click("#download-file")
    assert Path(download.value.path()).read_bytes() == b"beta\n"


def test_the_checks_see_what_a_bad_page_does_wrong(open_ui: Callable[..., UI]) -> None:
    """The page checks are not vacuous: axe-core, as these tests inject it, finds an
    image without a text and a nameless button on a page made to have them."""
    ui = open_ui()
    ui.page.set_content(
        '<!doctype html><html lang="en"><title>bad</title><main><h1>Bad</h1>'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><button></button></main>'
    )
    ui.axe("bad")
    found = {problem.split()[3] for problem in ui.problems}
    assert {"image-alt", "button-name"} <= found, ui.problems
    ui.problems.clear()  # seen: not a failure of this test's pages
