"""What the web UI's end-to-end tests share: a real Chromium (Debian's ``/usr/bin/chromium``, driven
by Playwright) against a real ``costor serve`` on a loopback port, with axe-core
injected into every page.

What this directory needs beyond the venv (``scripts/test.sh`` installs both):

- Debian's ``chromium`` (``apt-get install chromium``): Playwright launches it by path;
  its own browser download (``playwright install``) cannot work where the tests run.
- axe-core from npm, pinned by ``package.json`` and ``package-lock.json`` here:
  ``npm ci --prefix tests/ui``.

Without them the tests skip with the reason, except under CI (``CI=true``), where a
missing browser or axe-core is a failure: CI must never pass by not looking.

The site (:func:`e2e_site`): clients ``alpha`` and ``beta`` as in ``tests/server/ui_site.py``
(small, backed up; ``alpha`` twice, with one file changed in between, so it has previous
versions; ``beta`` with a directory of 20,000 entries) and ``gamma``, a few hundred MiB of incompressible files, never backed up and
under a policy with an RPO, so the dashboard calls it late until the test backs it up.
Users as in ui_site: ``ada`` admin, ``aud`` auditor, ``eve`` end user of ``alpha``.

Screenshots: each page the tests visit is saved in the test's output directory
(pytest-playwright's ``--output``, ``test-results/`` by default) and, when
``COSTOR_UI_SHOTS=DIR`` is set (``scripts/ui_docs.py`` sets it), as ``DIR/<page>.png``
at a fixed viewport (1280×800; the dashboard also on a phone's 390×844 and a wall
screen's 1920×1080), for docs/ui.md.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# tests/server's helpers (a real `costor serve`, the UI's site and users): pytest puts
# each test directory on sys.path only for its own modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from serving import ENV, start_serve, stop_serve  # noqa: E402
from support.fixtures import Site  # noqa: E402
from support.inventory import client_table, local_tables, write_tables  # noqa: E402
from ui_site import PASSWORD, USERS  # noqa: E402

HERE = Path(__file__).resolve().parent
CHROMIUM = Path(os.environ.get("COSTOR_TEST_CHROMIUM", "/usr/bin/chromium"))
AXE = HERE / "node_modules" / "axe-core" / "axe.min.js"
# Debian's chromium as CI and a fresh Debian 12 have it: no sandbox (root in a
# container), nothing that talks to the network by itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WALL = {"width": 1920, "height": 1080}
# gamma's data: enough incompressible bytes that its backup takes several seconds, so
# the job page's progress bar is seen moving and the dashboard (refreshed every 2 s)
# shows it running (320 MiB showed the bar only 3 to 6 values; at ~330 MB/s 768 MiB
# ran ~2.3 s once the bar appeared, and the dashboard missed it once in CI);
# COSTOR_UI_BIG_MIB to try other sizes.
BIG_MIB = int(os.environ.get("COSTOR_UI_BIG_MIB", "1536"))
BIG_FILE_MIB = 8
# A file name that is markup with a script: shown as text, never run (autoescaping,
# and the pages' CSP); a dialog it opened would be a problem of the page.
HOSTILE = '<img src=x onerror="alert(1)"> & "q" %2F #x.txt'
BIG_DIRECTORY = 20_000  # entries of beta's big/: issue 21's directory that must stay usable
POLICY = """
[policies.yearly]
schedule = "0 0 1 1 *"
rpo = "1d"
"""


def missing_tools() -> str | None:
    """What the browser tests lack on this machine (None: nothing)."""
    if not CHROMIUM.exists():
        return f"no {CHROMIUM} (Debian: apt-get install chromium)"
    if not AXE.exists():
        return f"no {AXE.relative_to(HERE.parents[1])} (npm ci --prefix tests/ui)"
    return None


# --- the site ------------------------------------------------------------------------------


def write_big_tree(root: Path, mib: int) -> None:
    """``mib`` MiB of random (incompressible, never deduplicated) files under ``root``."""
    root.mkdir(parents=True)
    for i in range(0, mib, BIG_FILE_MIB):
        (root / f"blob-{i // BIG_FILE_MIB:03d}.bin").write_bytes(
            os.urandom(min(BIG_FILE_MIB, mib - i) * 1024 * 1024)
        )


@dataclass
class E2ESite:
    """The site under test and the sources its clients back up."""

    site: Site
    sources: dict[str, Path]
    base_url: str = ""


def make_e2e_site(root: Path) -> E2ESite:
    sources: dict[str, Path] = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        (source / "docs" / "deep").mkdir(parents=True)
        for i in range(3):
            (source / "docs" / f"note-{i}.txt").write_text(f"{name} note {i}\n")
        (source / "docs" / "deep" / "data.bin").write_bytes(os.urandom(200_000))
        (source / "file.txt").write_text(f"{name}\n")
        sources[name] = source
    (sources["alpha"] / HOSTILE).write_text("a name that is markup\n")
    big = sources["beta"] / "big"  # a directory the browser pages through
    big.mkdir()
    for i in range(BIG_DIRECTORY):
        (big / f"entry-{i:05d}").touch()
    sources["gamma"] = root / "src-gamma"
    write_big_tree(sources["gamma"], BIG_MIB)
    tables = local_tables({name: [sources[name]] for name in ("alpha", "beta")})
    gamma = client_table("gamma", [sources["gamma"]], 'policy = "yearly"')
    inventory = write_tables(root, *tables, gamma, POLICY, USERS)
    return E2ESite(Site(root, inventory, root / "pool"), sources)


@pytest.fixture(scope="module")
def e2e_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ESite]:
    """The site, applied: alpha backed up twice (``docs/note-0.txt`` changed in
    between), beta once, gamma never."""
    made = make_e2e_site(tmp_path_factory.mktemp("e2e"))
    site = made.site
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        applied = site.cli("apply", "--auto-approve")
        assert applied.code == 0, applied.stderr
        for name in ("alpha", "beta", "alpha"):
            backup = site.cli("backup", name)
            assert backup.code == 0, backup.stderr
            # Between alpha's two backups: a second version of one file.
            (made.sources["alpha"] / "docs" / "note-0.txt").write_text("alpha note 0, v2\n")
        yield made
    # gamma's data and the pool that holds it again: not left in pytest's last three
    # temporary directories.
    shutil.rmtree(made.sources["gamma"], ignore_errors=True)
    shutil.rmtree(site.pool_path, ignore_errors=True)


@pytest.fixture(scope="module")
def served(e2e_site: E2ESite) -> Iterator[E2ESite]:
    """A real ``costor serve`` of the site on a loopback port."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_LOGIN_POLICY", "user_failures=1000,address_failures=1000")
        process, base_url = start_serve(e2e_site.site)
    e2e_site.base_url = base_url
    try:
        yield e2e_site
    finally:
        stop_serve(process)


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, launched by path (never Playwright's download).
    Launched here rather than through pytest-playwright's session-wide fixtures: the
    browser (and Playwright's event loop) lives only as long as this module's tests."""
    missing = missing_tools()
    if missing is not None:
        pytest.fail(f"the browser tests cannot run: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class UI:
    """One browser session (its own cookies) on the served site, with the checks every
    page gets: axe-core and a screenshot."""

    page: Any  # playwright.sync_api.Page
    base_url: str
    output: Path
    # What the pages did wrong: axe-core's serious and critical violations, what the
    # Content-Security-Policy refused, script errors. Collected rather than raised, so
    # one run reports every page's; the test fails at its end when there are any.
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def console(message: Any) -> None:
            if message.type == "error" and "Content Security Policy" in message.text:
                self.problems.append(f"{self.page.url}: CSP: {message.text}")

        self.page.on("console", console)
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))

        def dialog(opened: Any) -> None:  # an alert() no page has: a name's script ran
            self.problems.append(f"{self.page.url}: a dialog opened: {opened.message}")
            opened.dismiss()

        self.page.on("dialog", dialog)

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str) -> Any:
        response = self.page.goto(self.url(path))
        self.page.wait_for_load_state("domcontentloaded")
        return response

    def log_in(self, user: str, password: str = PASSWORD) -> None:
        self.goto("/login")
        self.page.fill("#user", user)
        self.page.fill("#password", password)
        with self.page.expect_navigation():
            self.page.click("form[action='/login'] button[type=submit]")
        assert "/login" not in self.page.url, self.page.content()

    def log_out(self) -> None:
        with self.page.expect_navigation():
            self.page.click("form[action='/logout'] button[type=submit]")
        assert self.page.url.endswith("/login"), self.page.url

    def check(self, name: str, *, other_screens: bool = False, full_page: bool = True) -> None:
        """The page as it is now: axe-core's serious and critical violations go to
        :attr:`problems` (the others are printed), its screenshot is saved as
        ``name``; ``other_screens``: also on a phone (``name-phone``) and a wall
        screen (``name-wall``), checked again at each size."""
        self.axe(name)
        self.shot(name, full_page=full_page)
        if other_screens:
            for suffix, size in (("phone", PHONE), ("wall", WALL)):
                self.page.set_viewport_size(size)
                try:
                    self.axe(f"{name}-{suffix}")
                    self.shot(f"{name}-{suffix}", full_page=False)
                finally:
                    self.page.set_viewport_size(VIEWPORT)

    def axe(self, name: str) -> None:
        if not self.page.evaluate("() => typeof window.axe !== 'undefined'"):
            # Not page.add_script_tag: the pages' Content-Security-Policy (scripts from
            # the server only) refuses an injected inline script, and the tests keep
            # that policy on. Playwright's own evaluation is outside the page's CSP.
            self.page.evaluate(AXE.read_text() + "\n;undefined")
        result = self.page.evaluate(
            "() => axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']},"
            " resultTypes: ['violations']})"
        )
        for violation in result["violations"]:
            impact, rule = violation["impact"], violation["id"]
            where = [", ".join(node["target"]) for node in violation["nodes"][:5]]
            print(f"axe {name}: {impact} {rule}: {where}")
            if impact in ("serious", "critical"):
                html = " | ".join(node["html"][:160] for node in violation["nodes"][:3])
                self.problems.append(f"axe {name}: {impact} {rule} ({violation['help']}): {html}")

    def shot(self, name: str, *, full_page: bool = True) -> None:
        """``name``.png in the test's output directory, and in ``$COSTOR_UI_SHOTS``."""
        self.output.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.output / f"{name}.png"), full_page=full_page)
        docs = os.environ.get("COSTOR_UI_SHOTS")
        if docs:
            Path(docs).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(docs) / f"{name}.png"), full_page=full_page)


@pytest.fixture
def open_ui(chromium: Any, served: E2ESite, output_path: str) -> Iterator[Callable[..., UI]]:
    """Opens fresh browser sessions (each its own cookies) on the served site;
    ``open_ui(javascript=False)``: a browser with JavaScript off."""
    contexts: list[Any] = []

    def one(javascript: bool) -> UI:
        context = chromium.new_context(
            viewport=VIEWPORT, accept_downloads=True, java_script_enabled=javascript
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return UI(context.new_page(), served.base_url, Path(output_path))

    opened: list[UI] = []

    def tracked(javascript: bool = True) -> UI:
        opened.append(one(javascript))
        return opened[-1]

    try:
        yield tracked
    finally:
        for context in contexts:
            context.close()
    problems = [problem for ui in opened for problem in ui.problems]
    if problems:
        pytest.fail("the pages have problems:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def ui(open_ui: Callable[..., UI]) -> UI:
    """A fresh browser session (no cookies) on the served site."""
    return open_ui()
