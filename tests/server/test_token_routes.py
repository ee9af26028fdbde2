"""API tokens over the API (costor/server/token_routes.py), against a real `costor
serve`: one's own tokens, never more than the caller (scope, clients), other users'
only with users.manage, revoking (another's is not found), append tokens refused, and
every creation and revocation in the audit log. SQLite and (the suite's PostgreSQL
pass) PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site
from support.inventory import local_tables, write_tables

USERS = """
[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.otto]
groups = ["ops"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


class Api:
    def __init__(self, site: Site, base_url: str) -> None:
        self.site = site
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def cli_token(self, user: str, scope: str, *args: str) -> str:
        result = self.site.cli("token", "create", "--user", user, "--scope", scope, *args)
        assert result.code == 0, result.stderr
        return result.stdout.strip()

    def ask(self, token: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("token-routes")
    source = root / "src"
    source.mkdir()
    (source / "f.txt").write_text("x\n")
    site = Site(
        root,
        write_tables(root, *local_tables({"alpha": [source], "beta": [source]}), USERS),
        root / "pool",
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        process, base_url = start_serve(site)
        served = Api(site, base_url)
        try:
            yield served
        finally:
            served.http.close()
            stop_serve(process)


def test_one_makes_lists_uses_and_revokes_ones_own_tokens(api: Api) -> None:
    otto = api.cli_token("otto", "operate")
    made = api.ask(otto, "POST", "/api/v1/tokens", json={"scope": "read", "description": "ci"})
    assert made.status_code == 201, made.text
    new = made.json()
    assert (new["user"], new["scope"], new["description"]) == ("otto", "read", "ci")
    assert new["token"].startswith(f"costor_{new['id']}_")
    # It works, as a read token: it reads, it does not run backups.
    assert api.ask(new["token"], "GET", "/api/v1/status").status_code == 200
    assert api.ask(new["token"], "POST", "/api/v1/clients/alpha/backup").status_code == 403
    listed = api.ask(otto, "GET", "/api/v1/tokens").json()
    assert {t["user"] for t in listed} == {"otto"} and new["id"] in {t["id"] for t in listed}
    assert all("token" not in t and "secret" not in str(t) for t in listed)
    assert api.ask(otto, "GET", "/api/v1/tokens", params={"user": "ada"}).json() == []
    revoked = api.ask(otto, "DELETE", f"/api/v1/tokens/{new['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api.ask(new["token"], "GET", "/api/v1/status").status_code == 401
    # Audited: who made it and who revoked it, never the secret.
    token_id = otto.split("_")[1]
    records = api.site.cli("audit", "--json").json()
    created = [r for r in records if r["action"] == "token.create" and r["outcome"] == "ok"]
    assert any(
        r["actor"] == f"token:{token_id}" and r["detail"]["token"] == new["id"] for r in created
    )
    gone = [r for r in records if r["action"] == "token.revoke"]
    assert gone and gone[0]["target"] == f"token:{new['id']}"
    assert new["token"].split("_")[2] not in str(records)


def test_a_token_never_makes_one_above_itself(api: Api) -> None:
    reader = api.cli_token("ada", "read")
    for scope in ("operate", "admin", "append"):
        refused = api.ask(reader, "POST", "/api/v1/tokens", json={"scope": scope})
        assert refused.status_code == 403, (scope, refused.text)
        assert refused.json()["error"] == "PermissionDenied"
    limited = api.cli_token("ada", "admin", "--clients", "alpha")
    unlimited = api.ask(limited, "POST", "/api/v1/tokens", json={"scope": "read"})
    assert unlimited.status_code == 403  # no --clients: wider than the caller
    other = api.ask(limited, "POST", "/api/v1/tokens", json={"scope": "read", "clients": ["b*"]})
    assert other.status_code == 403
    same = api.ask(limited, "POST", "/api/v1/tokens", json={"scope": "read", "clients": ["alpha"]})
    assert same.status_code == 201 and same.json()["clients"] == ["alpha"]
    # The user's own roles still decide (as `costor token create`): otto is no admin.
    otto = api.cli_token("otto", "operate")
    assert api.ask(otto, "POST", "/api/v1/tokens", json={"scope": "admin"}).status_code == 403


def test_other_users_tokens_need_users_manage(api: Api) -> None:
    otto = api.cli_token("otto", "operate")
    refused = api.ask(otto, "POST", "/api/v1/tokens", json={"user": "ada", "scope": "read"})
    assert refused.status_code == 403
    ada = api.cli_token("ada", "admin")
    for_otto = api.ask(ada, "POST", "/api/v1/tokens", json={"user": "otto", "scope": "operate"})
    assert for_otto.status_code == 201 and for_otto.json()["user"] == "otto"
    too_much = api.ask(ada, "POST", "/api/v1/tokens", json={"user": "otto", "scope": "admin"})
    assert too_much.status_code == 400 and too_much.json()["error"] == "TokenRefused"
    nobody = api.ask(ada, "POST", "/api/v1/tokens", json={"user": "nobody", "scope": "read"})
    assert nobody.status_code == 400
    # otto cannot see or revoke ada's tokens: another's is not found.
    adas = api.ask(ada, "POST", "/api/v1/tokens", json={"scope": "read"}).json()
    assert api.ask(otto, "DELETE", f"/api/v1/tokens/{adas['id']}").status_code == 404
    assert api.ask(adas["token"], "GET", "/api/v1/status").status_code == 200
    everyone = api.ask(ada, "GET", "/api/v1/tokens").json()
    assert {"ada", "otto"} <= {t["user"] for t in everyone}
    assert api.ask(ada, "DELETE", f"/api/v1/tokens/{for_otto.json()['id']}").status_code == 200


def test_bad_requests_and_append_tokens(api: Api) -> None:
    ada = api.cli_token("ada", "admin")
    for body in (
        {"scope": "root"},
        {"scope": "read", "surprise": 1},
        {},
        {"scope": "read", "expires": "soon"},
    ):
        answer = api.ask(ada, "POST", "/api/v1/tokens", json=body)
        assert answer.status_code == 400, (body, answer.text)
    append = api.cli_token("ada", "append")
    for method, url in (("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens")):
        answer = api.ask(append, method, url, json={"scope": "append"})
        assert answer.status_code == 403, (method, answer.text)
    assert api.ask(append, "DELETE", "/api/v1/tokens/abc").status_code == 403
