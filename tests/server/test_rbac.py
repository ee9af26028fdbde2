"""Who may do what, as data: each built-in role (and a declared one) × each route × an
owned or a not-owned object → the status a real `costor serve` answers. Then: a token
never exceeds its user (its scope, its clients, the user's roles as applied now).

The end user owns client ``alpha`` (its group grants ``end-user`` on it); ``beta`` is
not theirs: its objects answer 404 to them, as objects that do not exist would. A
permission missing on an object the caller sees answers 403. The site is in maintenance
for the whole module, so the jobs the matrix queues stay queued and change nothing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import CliResult, Site
from support.inventory import local_tables, write_tables

PASSWORD = 'password = { env = "COSTOR_TEST_USER_PASSWORD" }'
USERS = f"""
[roles.backup-runner]
permissions = ["backups.run", "jobs.read"]
description = "backs up any client, reads no snapshot"

[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[groups.auditors]
roles = ["auditor"]

[groups.alpha-owners]
roles = ["end-user"]
clients = ["alph*"]

[groups.viewers]
roles = ["viewer"]

[groups.runners]
roles = ["backup-runner"]

[users.ada]
groups = ["admins"]
{PASSWORD}

[users.otto]
groups = ["ops"]
{PASSWORD}

[users.aud]
groups = ["auditors"]
{PASSWORD}

[users.eve]
groups = ["alpha-owners"]
{PASSWORD}

[users.vic]
groups = ["viewers"]
{PASSWORD}

[users.run]
groups = ["runners"]
{PASSWORD}

[users.flip]
groups = ["ops"]
{PASSWORD}
"""

# Each role's user and the highest scope its tokens may have.
ROLES = {
    "admin": ("ada", "admin"),
    "operator": ("otto", "operate"),
    "auditor": ("aud", "read"),
    "end-user": ("eve", "operate"),
    "viewer": ("vic", "read"),
    "declared": ("run", "operate"),
}
AU, EU = "auditor", "end-user"

# (method, route, object: "own" | "other" | None) -> status per role, in ROLES' order.
# {snapshot}, {job}, {file}, {dir}: alpha's ("own") or beta's ("other"); {client}: alpha
# or beta. Downloads (costor/server/downloads.py) are content: snapshots.read.
MATRIX: list[tuple[str, str, str | None, tuple[int, ...]]] = [
    # reads: admin, operator, auditor, end-user, viewer, declared
    ("GET", "/api/v1/status", None, (200, 200, 200, 403, 200, 403)),
    ("GET", "/api/v1/clients", None, (200, 200, 200, 403, 200, 403)),
    ("GET", "/api/v1/pools", None, (200, 200, 200, 403, 200, 403)),
    ("GET", "/api/v1/maintenance", None, (200, 200, 200, 403, 200, 403)),
    ("GET", "/api/v1/snapshots", None, (200, 200, 200, 200, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}", "own", (200, 200, 200, 200, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}", "other", (200, 200, 200, 404, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}/tree", "own", (200, 200, 403, 200, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}/tree", "other", (200, 200, 403, 404, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}/file?path={file}", "own", (200, 200, 403, 200, 200, 403)),
    (
        "GET",
        "/api/v1/snapshots/{snapshot}/file?path={file}",
        "other",
        (200, 200, 403, 404, 200, 403),
    ),
    (
        "GET",
        "/api/v1/snapshots/{snapshot}/archive?path={dir}",
        "own",
        (200, 200, 403, 200, 200, 403),
    ),
    (
        "GET",
        "/api/v1/snapshots/{snapshot}/archive?path={dir}",
        "other",
        (200, 200, 403, 404, 200, 403),
    ),
    ("GET", "/api/v1/clients/{client}/versions?path={file}", "own", (200, 200, 403, 200, 200, 403)),
    (
        "GET",
        "/api/v1/clients/{client}/versions?path={file}",
        "other",
        (200, 200, 403, 404, 200, 403),
    ),
    ("GET", "/api/v1/jobs", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/jobs/{job}", "own", (200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/jobs/{job}", "other", (200, 200, 200, 404, 200, 200)),
    # actions (a job that has ended answers 409 to whoever may cancel it)
    ("POST", "/api/v1/clients/{client}/backup", "own", (202, 202, 403, 403, 403, 202)),
    ("POST", "/api/v1/clients/{client}/backup", "other", (202, 202, 403, 404, 403, 202)),
    ("POST", "/api/v1/clients/{client}/forget", "own", (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/clients/{client}/forget", "other", (202, 202, 403, 404, 403, 403)),
    ("POST", "/api/v1/clients/{client}/selftest", "own", (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/pools/main/check", None, (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/pools/main/prune", None, (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/jobs/{job}/cancel", "own", (409, 409, 403, 403, 403, 403)),
    ("POST", "/api/v1/jobs/{job}/cancel", "other", (409, 409, 403, 404, 403, 403)),
    ("PUT", "/api/v1/maintenance", None, (200, 200, 403, 403, 403, 403)),
]
MAINTENANCE_ON = {"on": True, "reason": "the RBAC matrix"}


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.process = process
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.tokens: dict[str, str] = {}
        self.objects: dict[str, dict[str, str]] = {}

    def token_cli(self, action: str, *args: str) -> CliResult:
        return self.site.cli("token", action, *args)

    def token(self, user: str, scope: str, *args: str) -> str:
        result = self.token_cli("create", "--user", user, "--scope", scope, *args)
        assert result.code == 0, result.stderr
        return result.stdout.strip()

    def ask(self, token: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.request(method, url, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("rbac")
    sources = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        source.mkdir()
        (source / "file.txt").write_text(f"{name}\n")
        sources[name] = [source]
    inventory = write_tables(root, *local_tables(sources), USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta"):
            assert site.cli("backup", name).code == 0
        assert site.cli("maintenance", "on", "--reason", "the RBAC matrix").code == 0
        process, base_url = start_serve(site)
        served = Served(site, base_url, process)
        try:
            for role, (user, scope) in ROLES.items():
                served.tokens[role] = served.token(user, scope)
            snapshots = site.cli("snapshots", "--json").json()
            jobs = site.cli("jobs", "--json").json()
            for own, client in (("own", "alpha"), ("other", "beta")):
                served.objects[own] = {
                    "client": client,
                    "snapshot": next(s["id"] for s in snapshots if s["client"] == client),
                    "job": str(next(j["id"] for j in jobs if j["target"] == client)),
                    "dir": str(root / f"src-{client}"),
                    "file": str(root / f"src-{client}" / "file.txt"),
                }
            yield served
        finally:
            served.http.close()
            stop_serve(process)


@pytest.mark.parametrize(
    ("method", "route", "owned", "statuses"),
    MATRIX,
    ids=[f"{m} {r} {o or ''}".strip() for m, r, o, _s in MATRIX],
)
def test_rbac_matrix(
    served: Served, method: str, route: str, owned: str | None, statuses: tuple[int, ...]
) -> None:
    url = route.format(**served.objects[owned or "own"])
    body = MAINTENANCE_ON if method == "PUT" else None
    got = {}
    for role in ROLES:
        response = served.ask(served.tokens[role], method, url, json=body)
        got[role] = response.status_code
        if response.status_code == 404:
            assert response.json()["error"] != "NotFound", "an unknown route, not an object"
        if response.status_code == 403:
            assert response.json()["error"] == "PermissionDenied"
    assert got == dict(zip(ROLES, statuses, strict=True))


def test_lists_show_only_what_the_caller_may_see(served: Served) -> None:
    mine = served.ask(served.tokens[EU], "GET", "/api/v1/snapshots").json()
    assert {s["client"] for s in mine} == {"alpha"}
    jobs = served.ask(served.tokens[EU], "GET", "/api/v1/jobs").json()
    assert jobs and {j["target"] for j in jobs} == {"alpha"}  # no other client's, no pool's
    every = served.ask(served.tokens[AU], "GET", "/api/v1/snapshots").json()
    assert {s["client"] for s in every} == {"alpha", "beta"}
    # A 404 for a not-owned object says what a missing one says.
    beta = served.objects["other"]["snapshot"]
    hidden = served.ask(served.tokens[EU], "GET", f"/api/v1/snapshots/{beta}").json()
    missing = served.ask(served.tokens[EU], "GET", f"/api/v1/snapshots/{'0' * 64}").json()
    assert hidden["error"] == missing["error"] == "SnapshotNotFound"
    assert served.ask(served.tokens[EU], "GET", "/api/v1/snapshots/beta:latest").status_code == 404


def test_a_token_never_exceeds_its_user(served: Served) -> None:
    own = served.objects["own"]
    # Scope: an operator's read token reads, and runs nothing.
    otto_read = served.token("otto", "read")
    backup = f"/api/v1/clients/{own['client']}/backup"
    assert served.ask(otto_read, "POST", backup).status_code == 403
    tree = f"/api/v1/snapshots/{own['snapshot']}/tree"
    assert served.ask(otto_read, "GET", tree).status_code == 200
    # At creation: no scope above what the user's roles allow.
    for user, scope, why in [
        ("aud", "operate", "read only"),
        ("aud", "admin", "no admin role"),
        ("otto", "admin", "no admin role"),
        ("vic", "operate", "read only"),
    ]:
        refused = served.token_cli("create", "--user", user, "--scope", scope)
        assert refused.code == 1 and why in refused.stderr, (user, scope, refused.stderr)
    # Clients: the token's limit and the user's grants both hold.
    eve_beta = served.token("eve", "operate", "--clients", "beta")
    assert served.ask(eve_beta, "GET", "/api/v1/snapshots").json() == []
    for ref in (own["snapshot"], served.objects["other"]["snapshot"]):
        assert served.ask(eve_beta, "GET", f"/api/v1/snapshots/{ref}").status_code == 404
    ada_alpha = served.token("ada", "admin", "--clients", "alpha")
    beta_backup = "/api/v1/clients/beta/backup"
    assert served.ask(ada_alpha, "POST", beta_backup).status_code == 404
    assert served.ask(ada_alpha, "POST", backup).status_code == 202
    # The whole site's objects need every client: a pool, maintenance.
    assert served.ask(ada_alpha, "POST", "/api/v1/pools/main/prune").status_code == 403
    maintenance = served.ask(ada_alpha, "PUT", "/api/v1/maintenance", json=MAINTENANCE_ON)
    assert maintenance.status_code == 403


def test_a_token_follows_its_users_roles_as_applied_now(served: Served) -> None:
    """flip is an operator, then an auditor: the same token stops running backups."""
    site = served.site
    token = served.token("flip", "operate")
    backup = "/api/v1/clients/alpha/backup"
    assert served.ask(token, "POST", backup).status_code == 202
    text = site.inventory.read_text()
    site.inventory.write_text(
        text.replace('[users.flip]\ngroups = ["ops"]', '[users.flip]\ngroups = ["auditors"]')
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_TEST_USER_PASSWORD", "a long test password")
        applied = site.cli("apply", "--auto-approve")
    assert applied.code == 0, applied.stderr

    def refused() -> bool:
        return served.ask(token, "POST", backup).status_code == 403

    _wait(refused, "the applied roles to reach the server")  # it reloads every 2 s
    assert served.ask(token, "GET", "/api/v1/status").status_code == 200


def _wait(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
