"""Who may do what, as data: each built-in role (and a declared one) × each route × an
owned or a not-owned object → the status a real `costor serve` answers; every route of
the application is in the table (a test fails for one that is not). Then each token
scope (read, operate, admin, append) × route, and: a token never exceeds its user (its
scope, its clients, the user's roles as applied now).

The end user owns client ``alpha`` (its group grants ``end-user`` on it); ``beta`` is
not theirs: its objects answer 404 to them, as objects that do not exist would. A
permission missing on an object the caller sees answers 403. The site is in maintenance
for the whole module, so the jobs the matrix queues stay queued and change nothing.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import CliResult, Site
from support.inventory import local_tables, write_tables

from costor.server.app import create_app

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
OBJECT = "/api/v1/pools/main/objects"

# (method, route, object: "own" | "other" | None) -> status per role, in ROLES' order.
# {snapshot}, {job}, {file}, {dir}: alpha's ("own") or beta's ("other"); {client}: alpha
# or beta; {missing}: a well-formed id nothing has. Downloads (costor/server/downloads.py)
# are content: snapshots.read. The Backup API's objects (costor/server/objects.py) are a
# pool's, so the whole site's: objects.read / objects.append / admin on every client.
MATRIX: list[tuple[str, str, str | None, tuple[int, ...]]] = [
    # reads: admin, operator, auditor, end-user, viewer, declared
    ("GET", "/api/v1/status", None, (200, 200, 200, 200, 200, 403)),
    ("GET", "/api/v1/clients", None, (200, 200, 200, 200, 200, 403)),
    ("GET", "/api/v1/pools", None, (200, 200, 200, 200, 200, 403)),
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
    ("POST", "/api/v1/clients/{client}/selftest", "other", (202, 202, 403, 404, 403, 403)),
    ("POST", "/api/v1/snapshots/{snapshot}/restore", "own", (202, 202, 403, 202, 403, 403)),
    ("POST", "/api/v1/snapshots/{snapshot}/restore", "other", (202, 202, 403, 404, 403, 403)),
    ("POST", "/api/v1/pools/main/check", None, (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/pools/main/prune", None, (202, 202, 403, 403, 403, 403)),
    ("POST", "/api/v1/jobs/{job}/cancel", "own", (409, 409, 403, 403, 403, 403)),
    ("POST", "/api/v1/jobs/{job}/cancel", "other", (409, 409, 403, 404, 403, 403)),
    ("PUT", "/api/v1/maintenance", None, (200, 200, 403, 403, 403, 403)),
    # records: a job's log as the job; applies, sites (config.read); the audit log
    ("GET", "/api/v1/jobs/{job}/log", "own", (200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/jobs/{job}/log", "other", (200, 200, 200, 404, 200, 200)),
    ("GET", "/api/v1/jobs/{job}/events", "own", (200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/jobs/{job}/events", "other", (200, 200, 200, 404, 200, 200)),
    ("GET", "/api/v1/applies", None, (200, 200, 200, 403, 200, 403)),
    ("GET", "/api/v1/sites", None, (200, 200, 200, 200, 200, 403)),
    ("GET", "/api/v1/audit", None, (200, 403, 200, 403, 403, 403)),
    ("GET", "/api/v1/audit/verify", None, (200, 403, 200, 403, 403, 403)),
    # who asks: anyone with a token; a session nothing has is 404 to everyone
    ("GET", "/api/v1/session", None, (200, 200, 200, 200, 200, 200)),
    ("GET", "/api/v1/sessions", None, (200, 200, 200, 200, 200, 200)),
    ("DELETE", "/api/v1/sessions/{missing}", None, (404, 404, 404, 404, 404, 404)),
    ("POST", "/api/v1/logout", None, (400, 400, 400, 400, 400, 400)),
    # tokens: one's own (a read token of one's own user, no more than the caller)
    ("GET", "/api/v1/tokens", None, (200, 200, 200, 200, 200, 200)),
    ("POST", "/api/v1/tokens", None, (201, 201, 201, 201, 201, 201)),
    ("DELETE", "/api/v1/tokens/{missing}", None, (404, 404, 404, 404, 404, 404)),
    # the Backup API: a pool's stored objects (a snapshot's manifest; a missing pack)
    ("GET", "/api/v1/pools/main/objects/?prefix=snapshots/", None, (200, 403, 403, 403, 403, 403)),
    ("HEAD", f"{OBJECT}/snapshots/{{snapshot}}", None, (200, 403, 403, 403, 403, 403)),
    ("GET", f"{OBJECT}/snapshots/{{snapshot}}", None, (200, 403, 403, 403, 403, 403)),
    # (a hash-named object is put again, idempotent: 201 each time)
    ("PUT", f"{OBJECT}/snapshots/{{snapshot}}", None, (201, 403, 403, 403, 403, 403)),
    ("DELETE", f"{OBJECT}/index/{{missing}}", None, (204, 403, 403, 403, 403, 403)),
]
# Routes without a token: the same answer whoever asks (their own tests ask them).
PUBLIC = {("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/api/v1/login")}
MAINTENANCE_ON = {"on": True, "reason": "the RBAC matrix"}

# Each scope a token of ada (admin) may have: what it is let do, on alpha's objects.
SCOPES = ("read", "operate", "admin", "append")
SCOPE_MATRIX: list[tuple[str, str, tuple[int, ...]]] = [
    # read, operate, admin, append
    ("GET", "/api/v1/status", (200, 200, 200, 403)),
    ("GET", "/api/v1/snapshots/{snapshot}/tree", (200, 200, 200, 403)),
    ("GET", "/api/v1/audit", (200, 200, 200, 403)),
    ("POST", "/api/v1/clients/{client}/backup", (403, 202, 202, 403)),
    ("POST", "/api/v1/snapshots/{snapshot}/restore", (403, 202, 202, 403)),
    ("POST", "/api/v1/jobs/{job}/cancel", (403, 409, 409, 403)),
    ("PUT", "/api/v1/maintenance", (403, 200, 200, 403)),
    ("GET", "/api/v1/pools/main/objects/?prefix=snapshots/", (200, 200, 200, 200)),
    ("HEAD", f"{OBJECT}/snapshots/{{snapshot}}", (200, 200, 200, 200)),
    ("GET", f"{OBJECT}/snapshots/{{snapshot}}", (200, 200, 200, 403)),
    ("PUT", f"{OBJECT}/snapshots/{{snapshot}}", (403, 403, 201, 201)),
    ("DELETE", f"{OBJECT}/index/{{missing}}", (403, 403, 204, 403)),
    ("GET", "/api/v1/session", (200, 200, 200, 200)),
    ("POST", "/api/v1/tokens", (201, 201, 201, 403)),
]


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.process = process
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.tokens: dict[str, str] = {}
        self.scoped: dict[str, str] = {}  # ada's token of each scope
        self.objects: dict[str, dict[str, str]] = {}
        self.manifest = b""  # alpha's snapshot's manifest, as the pool stores it

    def request(self, token: str, method: str, route: str, owned: str | None) -> httpx.Response:
        """``route`` for the ``owned`` objects, with the body its method takes."""
        url = route.format(**self.objects[owned or "own"])
        if method == "PUT" and "/objects/" in route:
            return self.ask(token, method, url, content=self.manifest)
        if route == "/api/v1/tokens" and method == "POST":
            return self.ask(token, method, url, json={"scope": "read"})
        if route.endswith("/restore"):
            return self.ask(token, method, url, json={"target": self.objects["own"]["target"]})
        return self.ask(token, method, url, json=MAINTENANCE_ON if method == "PUT" else None)

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
            served.scoped = {scope: served.token("ada", scope) for scope in SCOPES}
            snapshots = site.cli("snapshots", "--json").json()
            jobs = site.cli("jobs", "--json").json()
            for own, client in (("own", "alpha"), ("other", "beta")):
                served.objects[own] = {
                    "client": client,
                    "snapshot": next(s["id"] for s in snapshots if s["client"] == client),
                    "job": str(next(j["id"] for j in jobs if j["target"] == client)),
                    "dir": str(root / f"src-{client}"),
                    "file": str(root / f"src-{client}" / "file.txt"),
                    "missing": "0" * 64,
                    "target": str(root / "restored"),
                }
            served.manifest = (
                root / "pool" / "snapshots" / served.objects["own"]["snapshot"]
            ).read_bytes()
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
    got = {}
    for role in ROLES:
        response = served.request(served.tokens[role], method, route, owned)
        got[role] = response.status_code
        if method != "HEAD" and response.status_code == 404:
            assert response.json()["error"] != "NotFound", "an unknown route, not an object"
        if method != "HEAD" and response.status_code == 403:
            assert response.json()["error"] == "PermissionDenied"
    assert got == dict(zip(ROLES, statuses, strict=True))


def test_every_route_is_in_the_matrix() -> None:
    """A route added without its row fails here: the table is the whole API."""
    document = create_app("inventory.toml").openapi()  # no inventory is read to build it
    objects = {"client": "alpha", "snapshot": "f" * 64, "job": "1", "missing": "0" * 64}
    objects |= {"dir": "/d", "file": "/f", "target": "/t"}
    asked = {(method, route.format(**objects).split("?")[0]) for method, route, *_ in MATRIX}
    missing = []
    for path, operations in document["paths"].items():
        # A parameter is one segment; an object's name (objects.py's {name:path}) more.
        pattern = re.compile("^" + re.sub(r"\\{(\w+)\\}", _segments, re.escape(path)) + "$")
        for method in (m.upper() for m in operations):
            if (method, path) in PUBLIC:
                continue
            if not any(m == method and pattern.match(url) for m, url in asked):
                missing.append(f"{method} {path}")
    assert missing == []
    assert len(document["paths"]) >= 30  # the document is the whole API, not a part


def _segments(parameter: re.Match[str]) -> str:
    return ".+" if parameter[1] == "name" else "[^/]+"


@pytest.mark.parametrize(
    ("method", "route", "statuses"),
    SCOPE_MATRIX,
    ids=[f"{m} {r}" for m, r, _s in SCOPE_MATRIX],
)
def test_each_scope_of_a_token(
    served: Served, method: str, route: str, statuses: tuple[int, ...]
) -> None:
    """ada is an admin: what her token of each scope is let do."""
    tokens = served.scoped
    got = {
        scope: served.request(tokens[scope], method, route, "own").status_code for scope in SCOPES
    }
    assert got == dict(zip(SCOPES, statuses, strict=True))


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
