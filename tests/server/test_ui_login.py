"""The web UI's login, logout and error pages against a real `costor serve`: the login
form's protection against login CSRF, where a login may send the browser next, the
session cookie's flags, a page's security headers, and errors shown as pages while
the API's stay JSON."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from ui_site import PASSWORD, Served, served, ui_site  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)


def test_a_page_without_a_session_goes_to_the_login_with_the_way_back(served: Served) -> None:
    page = served.page()
    response = page.get("/?state=failed")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2F%3Fstate%3Dfailed"
    form = page.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="next" value="/?state=failed"' in form.text


def test_logging_in_sets_the_session_cookie_and_goes_on(served: Served) -> None:
    page = served.page()
    response = page.log_in("ada", next="/?x=1")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/?x=1"
    cookie = next(h for h in response.headers.get_list("set-cookie") if "costor_session=" in h)
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    home = page.get("/")
    assert home.status_code == 200
    assert "ada" in home.text and "Log out" in home.text


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_a_login_never_sends_the_browser_to_another_site(served: Served, target: str) -> None:
    response = served.page().log_in("ada", next=target)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_a_wrong_password_shows_the_form_again(served: Served) -> None:
    page = served.page()
    response = page.log_in("ada", password="not " + PASSWORD)
    assert response.status_code == 401
    assert "Wrong user name or password." in response.text
    assert "costor_session=" not in response.headers.get("set-cookie", "")
    unknown = page.log_in("nobody")
    assert unknown.status_code == 401 and "Wrong user name or password." in unknown.text


def test_a_login_form_posted_from_elsewhere_is_refused(served: Served) -> None:
    """Another site's form cannot carry the SameSite=Strict form cookie."""
    page = served.page()
    response = page.http.post(
        "/login", data={"user": "ada", "password": PASSWORD, "token": "made-up", "next": "/"}
    )
    assert response.status_code == 400
    assert "expired" in response.text
    assert "costor_session=" not in response.headers.get("set-cookie", "")


def test_logging_out_needs_the_csrf_token_and_ends_the_session(served: Served) -> None:
    page = served.page("eve")
    assert page.get("/").status_code == 200
    refused = page.http.post("/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403
    assert page.get("/").status_code == 200  # still logged in
    out = page.post("/logout")
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert page.get("/").status_code == 303


def test_pages_carry_security_headers_and_the_api_keeps_json_errors(served: Served) -> None:
    page = served.page("ada")
    home = page.get("/")
    assert "script-src 'self'" in home.headers["content-security-policy"]
    assert home.headers["x-frame-options"] == "DENY"
    assert home.headers["cache-control"] == "no-store"
    missing = page.get("/no/such/page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "Not found" in missing.text
    api = page.get("/api/v1/no-such-route")
    assert api.status_code == 404 and api.json()["error"] == "NotFound"


def test_the_static_files_are_served_with_their_licences(served: Served) -> None:
    page = served.page()
    htmx = page.get("/static/vendor/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:2000]
    licence = page.get("/static/vendor/htmx.LICENSE")
    assert licence.status_code == 200 and re.search("BSD|Zero", licence.text)


def test_a_page_that_refreshes_itself_keeps_no_session_alive(served: Served) -> None:
    """A dashboard left open on a wall polls every 2 s: those polls (X-Costor-Poll) must
    not push the idle limit on, or a browser left open would stay logged in."""
    page = served.page("otto")
    secret = page.http.cookies["costor_session"]
    session_id = hashlib.sha256(secret.encode()).hexdigest()
    soon = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S.%f")

    def expires() -> str:
        [(when,)] = served.site.sql(
            "SELECT expires_at FROM login_sessions WHERE id = :i", i=session_id
        )
        return str(when)

    served.site.sql("UPDATE login_sessions SET expires_at = :t WHERE id = :i", t=soon, i=session_id)
    before = expires()
    poll = {"HX-Request": "true", "X-Costor-Poll": "1"}
    assert page.get("/dashboard/running", headers=poll).status_code == 200
    assert page.get("/", headers=poll).status_code == 200
    assert expires() == before
    assert page.get("/").status_code == 200  # someone looked: the limit moves on
    assert expires() > before
