"""The site server's keys (issue 20): left out of a site's document at their defaults,
so sites applied before them are not shown as changed; kept when set."""

from __future__ import annotations

from costor.config.model import SiteConfig, is_loopback, split_listen

BEFORE_ISSUE_20 = {"name": "hq", "url": None, "replicate_to": [], "maintenance": False}


def test_defaults_leave_the_document_as_it_was() -> None:
    assert SiteConfig(name="hq").model_dump(mode="json") == BEFORE_ISSUE_20
    assert SiteConfig.model_validate(BEFORE_ISSUE_20).model_dump(mode="json") == BEFORE_ISSUE_20


def test_set_keys_are_kept_and_read_back() -> None:
    site = SiteConfig.model_validate(
        {"name": "hq", "listen": "[::1]:9443", "tls": {"cert": "c.pem", "key": "k.pem"}}
    )
    document = site.model_dump(mode="json")
    assert document["listen"] == "[::1]:9443" and document["tls"] == {
        "cert": "c.pem",
        "key": "k.pem",
    }
    assert "insecure_http" not in document
    assert SiteConfig.model_validate(document) == site


def test_listen_addresses() -> None:
    assert split_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert split_listen("[::1]:1") == ("::1", 1)
    assert [
        is_loopback(h) for h in ("127.0.0.2", "::1", "localhost", "0.0.0.0", "example.org")
    ] == [
        True,
        True,
        True,
        False,
        False,
    ]
