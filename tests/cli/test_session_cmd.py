"""`costor session list|revoke` on the site, over sessions made by the login use case
itself (no server: tests/server/test_login.py logs in over HTTP)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from support.fixtures import CliResult, Site
from support.inventory import local_tables, write_tables

from costor.cli.main import main
from costor.errors import LoginFailed, NotAuthenticated
from costor.ops.context import Context
from costor.ops.control.logins import (
    LoggedIn,
    LoginPolicy,
    LoginThrottle,
    authenticate_session,
    log_in,
)

PASSWORD = "a long test password"
USERS = """
[groups.ops]
roles = ["operator"]

[users.otto]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.ann]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


def session_cli(site: Site, action: str, *args: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["session", action, "-c", str(site.inventory), *args])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def site(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("COSTOR_TEST_USER_PASSWORD", PASSWORD)
    inventory = write_tables(tmp_path, *local_tables({"alpha": [source]}), USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    return site


def login(site: Site, user: str, password: str = PASSWORD) -> LoggedIn:
    ctx = Context(site.inventory)
    throttle = LoginThrottle(LoginPolicy())
    return log_in(ctx, user=user, password=password, address="192.0.2.9", throttle=throttle)


def test_sessions_are_listed_without_secrets_and_revoked(site: Site) -> None:
    assert session_cli(site, "list").stdout.strip() == "no sessions"
    otto, ann = login(site, "otto"), login(site, "ann")
    table = session_cli(site, "list")
    assert table.code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "USER", "STATE", "CREATED", "EXPIRES", "ADDRESS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [otto.info.id, "otto", "active"],
        [ann.info.id, "ann", "active"],
    ]
    assert all(line.endswith("192.0.2.9") for line in lines[1:])
    for secret in (otto.secret, otto.csrf_token, ann.secret, ann.csrf_token):
        assert secret not in table.stdout
        assert secret not in session_cli(site, "list", "--json").stdout
    only_ann = session_cli(site, "list", "--user", "ann", "--json").json()
    assert [s["id"] for s in only_ann] == [ann.info.id]
    revoked = session_cli(site, "revoke", otto.info.id.upper())  # hex digits, either case
    assert revoked.code == 0 and revoked.stdout.strip() == f"session {otto.info.id} of otto revoked"
    assert session_cli(site, "revoke", otto.info.id).code == 0  # twice is fine
    states = {s["id"]: s["state"] for s in session_cli(site, "list", "--json").json()}
    assert states == {otto.info.id: "revoked", ann.info.id: "active"}
    ctx = Context(site.inventory)
    with pytest.raises(NotAuthenticated, match="ended"):
        authenticate_session(ctx, otto.secret)
    assert authenticate_session(ctx, ann.secret).grant.user == "ann"
    for wrong in ("abc", "0" * 12, "'; DROP TABLE login_sessions; --", "%" * 12):
        missing = session_cli(site, "revoke", wrong)
        assert missing.code == 1 and "No login session" in missing.stderr, wrong


def test_a_declared_user_logs_in_only_once_applied(site: Site) -> None:
    site.inventory.write_text(
        site.inventory.read_text()
        + '\n[users.newcomer]\ngroups = ["ops"]\npassword = { env = "COSTOR_TEST_USER_PASSWORD" }\n'
    )
    with pytest.raises(LoginFailed):  # declared, not applied: unknown, as a typo would be
        login(site, "newcomer")
    with pytest.raises(LoginFailed):
        login(site, "otto", "not the password")
    assert site.cli("apply", "--auto-approve").code == 0
    assert login(site, "newcomer").info.user == "newcomer"


def test_a_new_password_ends_the_users_sessions(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = login(site, "otto")
    monkeypatch.setenv("COSTOR_TEST_USER_PASSWORD", "another long password")
    applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr
    ctx = Context(site.inventory)
    with pytest.raises(NotAuthenticated, match="changed since this login"):
        authenticate_session(ctx, before.secret)
    with pytest.raises(LoginFailed):
        login(site, "otto")  # the old password
    after = login(site, "otto", "another long password")
    assert authenticate_session(ctx, after.secret).grant.user == "otto"
