"""`costor token create|list|revoke` and what a token may be: shown once, stored as a
hash, never above its user's role, for an applied user only."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from support.fixtures import CliResult, Site
from support.inventory import local_tables, write_tables

from costor.errors import NotAuthenticated
from costor.ops.context import Context
from costor.ops.control.tokens import authenticate

USERS = """
[groups.admins]
roles = ["admin"]

[groups.viewers]
roles = ["viewer"]

[roles.superuser]
permissions = ["admin"]

[groups.supers]
roles = ["superuser"]

[users.alice]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.bob]
groups = ["viewers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.carol]
groups = ["supers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[roles.replicator]
permissions = ["objects.append"]

[groups.peers]
roles = ["replicator"]

[groups.alpha-peers]
roles = ["replicator"]
clients = ["alpha"]

[users.peer]
groups = ["peers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.half-peer]
groups = ["alpha-peers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


def token_cli(site: Site, action: str, *args: str) -> CliResult:
    return site.cli("token", action, *args)


@pytest.fixture
def users_site(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("COSTOR_TEST_USER_PASSWORD", "a long test password")
    inventory = write_tables(tmp_path, *local_tables({"alpha": [source]}), USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    return site


def test_a_token_is_shown_once_and_stored_as_a_hash(users_site: Site) -> None:
    created = token_cli(users_site, "create", "--user", "alice", "--scope", "admin")
    assert created.code == 0, created.stderr
    token = created.stdout.strip()
    match = re.fullmatch(r"costor_([0-9a-f]{12})_([0-9a-f]{64})", token)
    assert match, token
    token_id, secret = match.groups()
    rows = users_site.sql("SELECT id, secret_hash, scope, clients FROM api_tokens")
    assert rows == [(token_id, hashlib.sha256(secret.encode()).hexdigest(), "admin", "[]")]
    listed = token_cli(users_site, "list", "--json")
    assert secret not in listed.stdout
    assert [t["id"] for t in listed.json()] == [token_id]
    assert "alice" in token_cli(users_site, "list").stdout


def test_a_token_never_exceeds_its_user(users_site: Site) -> None:
    refused = token_cli(users_site, "create", "--user", "bob", "--scope", "admin")
    assert refused.code == 1 and "no admin role" in refused.stderr
    assert token_cli(users_site, "create", "--user", "bob", "--scope", "read").code == 0
    # A declared role that grants the admin permission is an admin role.
    assert token_cli(users_site, "create", "--user", "carol", "--scope", "admin").code == 0
    unknown = token_cli(users_site, "create", "--user", "mallory", "--scope", "read")
    assert unknown.code == 1 and "no user 'mallory' is applied" in unknown.stderr
    scope = token_cli(users_site, "create", "--user", "alice", "--scope", "bogus")
    assert scope.code == 1 and "unknown scope" in scope.stderr
    expires = token_cli(
        users_site, "create", "--user", "alice", "--scope", "read", "--expires", "soon"
    )
    assert expires.code == 1


def test_limits_expiry_description_and_revocation(users_site: Site) -> None:
    created = token_cli(
        users_site,
        "create",
        "--user",
        "bob",
        "--scope",
        "read",
        "--clients",
        "alpha,web-*",
        "--expires",
        "30d",
        "--description",
        "grafana",
        "--json",
    )
    assert created.code == 0, created.stderr
    document = created.json()
    assert document["clients"] == ["alpha", "web-*"]
    assert document["description"] == "grafana" and document["expires_at"] is not None
    revoked = token_cli(users_site, "revoke", document["id"], "--json")
    assert revoked.code == 0 and revoked.json()["revoked_at"] is not None
    assert "revoked" in token_cli(users_site, "list").stdout
    missing = token_cli(users_site, "revoke", "000000000000")
    assert missing.code == 1 and "No API token" in missing.stderr
    bad = token_cli(users_site, "create", "--user", "bob", "--scope", "read", "--clients", "a/b")
    assert bad.code == 1


def test_a_token_follows_its_user_as_applied_now(users_site: Site) -> None:
    """Removed user: its tokens stop working. A user who lost the admin role: its admin
    token reads only. (Checked at each request, against the applied configuration.)"""
    alice = token_cli(users_site, "create", "--user", "alice", "--scope", "admin").stdout
    bob = token_cli(users_site, "create", "--user", "bob", "--scope", "read").stdout
    assert authenticate(Context(users_site.inventory), alice.strip()).scope == "admin"
    text = users_site.inventory.read_text()
    text = text.replace('[users.alice]\ngroups = ["admins"]', '[users.alice]\ngroups = ["viewers"]')
    text = text[: text.index("[users.bob]")] + text[text.index("[users.carol]") :]
    users_site.inventory.write_text(text)
    applied = users_site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    ctx = Context(users_site.inventory)
    assert authenticate(ctx, alice.strip()).scope == "read"
    with pytest.raises(NotAuthenticated, match="no longer exists"):
        authenticate(ctx, bob.strip())


def test_an_append_token_needs_objects_append_on_the_whole_site(users_site: Site) -> None:
    """The Backup API's write-only scope: for a user whose role grants objects.append on
    every client; it grants that and nothing else (a pool holds every client's data)."""
    created = token_cli(users_site, "create", "--user", "peer", "--scope", "append")
    assert created.code == 0, created.stderr
    grant = authenticate(Context(users_site.inventory), created.stdout.strip())
    assert grant.scope == "append"
    assert grant.may("objects.append") and grant.may("objects.append", "alpha")
    for permission in ("objects.read", "config.read", "snapshots.list", "snapshots.read"):
        assert not grant.may(permission) and not grant.may_somewhere(permission)
    # An admin's append token is cut to objects.append too.
    alice = token_cli(users_site, "create", "--user", "alice", "--scope", "append").stdout
    cut = authenticate(Context(users_site.inventory), alice.strip())
    assert cut.may("objects.append") and not cut.may("objects.read")
    assert not cut.may_somewhere("config.read") and not cut.may_somewhere("admin")
    # objects.append on some clients only, or none: refused.
    for user in ("half-peer", "bob"):
        refused = token_cli(users_site, "create", "--user", user, "--scope", "append")
        assert refused.code == 1 and "objects.append on every client" in refused.stderr
    limited = token_cli(
        users_site, "create", "--user", "peer", "--scope", "append", "--clients", "alpha"
    )
    assert limited.code == 1 and "takes no --clients" in limited.stderr
    # A peer has nothing to read: its read token can do nothing.
    assert token_cli(users_site, "create", "--user", "peer", "--scope", "admin").code == 1


def test_a_read_token_reads_objects_only_for_a_user_with_objects_read(users_site: Site) -> None:
    alice = token_cli(users_site, "create", "--user", "alice", "--scope", "read").stdout
    admin_read = authenticate(Context(users_site.inventory), alice.strip())
    assert admin_read.may("objects.read") and not admin_read.may("objects.append")
    bob = token_cli(users_site, "create", "--user", "bob", "--scope", "read").stdout
    assert not authenticate(Context(users_site.inventory), bob.strip()).may_somewhere(
        "objects.read"
    )
