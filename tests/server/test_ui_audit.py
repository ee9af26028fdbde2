"""The audit log's page against a real `costor serve`: for the auditor and the admin
only (403 page for others, no menu entry), its filters, the chain's check, and every
field escaped (a downloaded file's name is anyone's choice)."""

# ruff: noqa: F811  (the fixtures imported from ui_site are the tests' parameters)
from __future__ import annotations

import re

import pytest
from ui_site import Served, served, ui_site  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(180)
EVIL = "<script>alert(1)<b>.txt"


def _records(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-record="(\d+)"', html)]


def _cells(html: str, column: int) -> list[str]:
    rows = re.findall(r'<tr data-record="\d+">(.*?)</tr>', html, re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[column].strip() for row in rows]


def test_the_auditor_and_the_admin_read_the_log_newest_first(served: Served) -> None:
    for user in ("aud", "ada"):
        page = served.page(user)
        home = page.get("/")
        assert 'href="/audit"' in home.text
        log = page.get("/audit")
        assert log.status_code == 200, log.text
        shown = _records(log.text)
        assert shown and shown == sorted(shown, reverse=True)
        assert "user:" + user in log.text  # its own login, recorded
        assert _records(page.get("/audit?offset=1").text)[0] == shown[1]


@pytest.mark.parametrize("user", ["eve", "otto"])
def test_anyone_else_gets_the_403_page(served: Served, user: str) -> None:
    page = served.page(user)
    assert 'href="/audit"' not in page.get("/").text
    refused = page.get("/audit")
    assert refused.status_code == 403 and "Not allowed" in refused.text
    assert page.get("/audit/verify").status_code == 403


def test_the_filters(served: Served) -> None:
    page = served.page("aud")
    served.page("otto")  # one more login to find
    logins = page.get("/audit?action=login&actor=user:otto")
    assert _records(logins.text)
    assert set(_cells(logins.text, 3)) == {"login"}
    assert set(_cells(logins.text, 2)) == {"user:otto"}
    patterns = page.get("/audit?actor=user:*&since=1h")
    assert set(_cells(patterns.text, 2)) >= {"user:otto", "user:aud"}
    assert _records(page.get("/audit?until=2000-01-01").text) == []
    assert "No records match these filters." in page.get("/audit?target=client:nothing").text
    bad = page.get("/audit?since=yesterday-ish")
    assert bad.status_code == 400 and 'class="problem"' in bad.text
    assert 'value="yesterday-ish"' in bad.text  # the form keeps what was typed


def test_the_chain_is_verified_on_demand(served: Served) -> None:
    page = served.page("aud")
    assert 'id="verify-chain"' in page.get("/audit").text
    whole = page.get("/audit/verify")
    assert whole.status_code == 200 and "The chain is intact" in whole.text
    block = page.get("/audit/verify", headers={"HX-Request": "true"})
    assert block.status_code == 200 and 'data-intact="true"' in block.text
    assert "<html" not in block.text  # a fragment for htmx


def test_a_file_name_in_a_record_is_escaped(served: Served) -> None:
    source = served.site.root / "src-alpha"
    (source / EVIL).write_text("not a script\n")
    assert served.site.cli("backup", "alpha").code == 0
    ada = served.page("ada")
    download = ada.get("/api/v1/snapshots/alpha:latest/file", params={"path": str(source / EVIL)})
    assert download.status_code == 200 and download.text == "not a script\n"
    log = ada.get("/audit?action=download")
    assert _records(log.text)
    assert "&lt;script&gt;alert(1)&lt;b&gt;.txt" in log.text
    assert "<script>alert" not in log.text and "<b>.txt" not in log.text
