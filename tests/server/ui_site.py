"""A site for the web UI's tests: clients ``alpha`` and ``beta`` (local, each with a
snapshot), users ``ada`` (admin), ``otto`` (operator), ``aud`` (auditor) and ``eve``
(end user of ``alpha`` only), all with the password :data:`PASSWORD`, and a real
``costor serve`` on a loopback port. :class:`Page` is a browser's session for the
page tests that need no browser (httpx: cookies, forms, status codes)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

PASSWORD = ENV["COSTOR_TEST_USER_PASSWORD"]
_SECRET = 'password = { env = "COSTOR_TEST_USER_PASSWORD" }'
USERS = f"""
[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[groups.auditors]
roles = ["auditor"]

[groups.alpha-owners]
roles = ["end-user"]
clients = ["alpha"]

[users.ada]
groups = ["admins"]
{_SECRET}

[users.otto]
groups = ["ops"]
{_SECRET}

[users.aud]
groups = ["auditors"]
{_SECRET}

[users.eve]
groups = ["alpha-owners"]
{_SECRET}
"""
_TOKEN = re.compile(r'name="token" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Served:
    """The site's running server."""

    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.base_url = base_url
        self.process = process

    def page(self, user: str | None = None) -> Page:
        """A new browser session, logged in as ``user`` (None: not logged in)."""
        page = Page(self.base_url)
        if user is not None:
            page.log_in(user)
        return page


class Page:
    """A browser without a browser: keeps cookies, follows no redirects by itself."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.csrf = ""

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        response = self.http.get(url, **kwargs)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, url: str, data: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """A form's POST, with the session's CSRF token as a browser's form carries it."""
        return self.http.post(url, data={"csrf": self.csrf, **(data or {})}, **kwargs)

    def log_in(self, user: str, password: str = PASSWORD, next: str = "/") -> httpx.Response:
        form = self.http.get("/login")
        token = _TOKEN.search(form.text)
        assert token, form.text
        response = self.http.post(
            "/login",
            data={"user": user, "password": password, "token": token.group(1), "next": next},
        )
        if response.status_code == 303:
            self.get("/")  # a page, for the CSRF token its forms carry
        return response

    def close(self) -> None:
        self.http.close()


def make_site(root: Path, *, files: int = 3) -> Site:
    """The site (applied, each client backed up once), not yet served."""
    sources = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        (source / "docs").mkdir(parents=True)
        for i in range(files):
            (source / "docs" / f"note-{i}.txt").write_text(f"{name} note {i}\n")
        (source / "file.txt").write_text(f"{name}\n")
        sources[name] = [source]
    inventory = write_tables(root, *local_tables(sources), USERS)
    return Site(root, inventory, root / "pool")


@pytest.fixture(scope="module")
def ui_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = make_site(tmp_path_factory.mktemp("ui"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta"):
            assert site.cli("backup", name).code == 0
        yield site


@pytest.fixture(scope="module")
def served(ui_site: Site) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_LOGIN_POLICY", "user_failures=1000,address_failures=1000")
        process, base_url = start_serve(ui_site)
    try:
        yield Served(ui_site, base_url, process)
    finally:
        stop_serve(process)
