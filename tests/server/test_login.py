"""Logging in with a password against a real `costor serve` (on 127.0.0.1): the session
cookie and its flags, CSRF for what changes things, logging out, expiry, revocation,
the throttling of failed attempts per user and per address, and an audit record for
every attempt.

The module's server counts failures with limits too high to be met (its tests fail
logins on purpose); the throttling tests start servers of their own with small limits
and delays (``COSTOR_LOGIN_POLICY``), so they take seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ENV, free_port, start_serve, stop_serve
from support.fixtures import CliResult, Site
from support.inventory import local_tables, site_table, write_tables
from test_serve import self_signed

from costor.cli.main import main
from costor.errors import ConfigError, LoginThrottled
from costor.ops.control.logins import LoginPolicy, LoginThrottle

PASSWORD = ENV["COSTOR_TEST_USER_PASSWORD"]
SECRET = 'password = { env = "COSTOR_TEST_USER_PASSWORD" }'
USERS = f"""
[groups.admins]
roles = ["admin"]

[groups.ops]
roles = ["operator"]

[groups.alpha-owners]
roles = ["end-user"]
clients = ["alpha"]

[users.ada]
groups = ["admins"]
{SECRET}

[users.otto]
groups = ["ops"]
{SECRET}

[users.eve]
groups = ["alpha-owners"]
{SECRET}

[users.gone]
groups = ["ops"]
{SECRET}
"""
LOOSE = "user_failures=1000,address_failures=1000"  # the module's server: no throttling
COOKIE = "costor_session"


class Served:
    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.process = process
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.objects: dict[str, dict[str, str]] = {}

    def login(self, user: str, password: str = PASSWORD) -> httpx.Response:
        response = self.http.post("/api/v1/login", json={"user": user, "password": password})
        self.http.cookies.clear()  # each test sends the cookie it means to send
        return response

    def session(self, user: str) -> Browser:
        response = self.login(user)
        assert response.status_code == 200, response.text
        return Browser(self, _cookie_value(response), response.json())


class Browser:
    """A logged-in session: its cookie sent with each request, as a browser would."""

    def __init__(self, served: Served, secret: str, document: dict[str, Any]) -> None:
        self.served = served
        self.secret = secret
        self.csrf = str(document["csrf_token"])
        self.id = str(document["session_id"])

    def ask(
        self, method: str, url: str, *, csrf: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Cookie": f"{COOKIE}={self.secret}"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.served.http.request(method, url, headers=headers, **kwargs)


def _cookie_value(response: httpx.Response) -> str:
    header = response.headers["set-cookie"]
    name, _, rest = header.partition("=")
    assert name == COOKIE, header
    return rest.split(";")[0]


def _ago(**delta: float) -> str:
    """A time that long ago (UTC), as the state database stores times."""
    return (datetime.now(UTC) - timedelta(**delta)).strftime("%Y-%m-%d %H:%M:%S.%f")


def _cookie_flags(response: httpx.Response) -> set[str]:
    return {part.strip().lower() for part in response.headers["set-cookie"].split(";")[1:]}


def session_cli(site: Site, action: str, *args: str) -> CliResult:
    """`costor session ACTION -c INVENTORY …` (the options follow the action)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["session", action, "-c", str(site.inventory), *args])
    return CliResult(code, out.getvalue(), err.getvalue())


def serve_with_policy(site: Site, policy: str) -> tuple[subprocess.Popen[bytes], str]:
    """`costor serve` with ``COSTOR_LOGIN_POLICY`` (read by the server at its first login)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_LOGIN_POLICY", policy)
        return start_serve(site)


def login_records(site: Site) -> list[dict[str, Any]]:
    rows = site.sql(
        "SELECT actor, target, outcome, source, detail FROM audit_records "
        "WHERE action = 'login' ORDER BY id"
    )
    return [
        {"actor": a, "target": t, "outcome": o, "source": s, "detail": json.loads(d)}
        for a, t, o, s, d in rows
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("logins")
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
        # Jobs the tests queue stay queued and change nothing.
        assert site.cli("maintenance", "on", "--reason", "login tests").code == 0
        yield site


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[Served]:
    process, base_url = serve_with_policy(site, LOOSE)
    served = Served(site, base_url, process)
    snapshots = site.cli("snapshots", "--json").json()
    for name in ("alpha", "beta"):
        served.objects[name] = {
            "snapshot": next(s["id"] for s in snapshots if s["client"] == name),
        }
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def test_a_login_sets_an_httponly_strict_cookie_and_keeps_only_its_hash(served: Served) -> None:
    response = served.login("eve")
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["user"] == "eve" and document["csrf_token"]
    assert document["expires_at"] <= document["absolute_expires_at"]
    flags = _cookie_flags(response)
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain HTTP on loopback: a Secure cookie would not come back
    secret = _cookie_value(response)
    stored = served.site.sql('SELECT id, csrf FROM login_sessions WHERE "user" = :u', u="eve")
    hashed = hashlib.sha256(secret.encode()).hexdigest()
    assert (hashed, document["csrf_token"]) in stored
    assert all(secret not in row_id for row_id, _csrf in stored)
    assert document["session_id"] == hashed[:12]
    # Who am I: the session's user, its group and rights, and its CSRF token.
    browser = Browser(served, secret, document)
    me = browser.ask("GET", "/api/v1/session").json()
    assert me["user"] == "eve" and me["via"] == "session"
    assert me["csrf_token"] == document["csrf_token"]
    assert me["session"]["id"] == document["session_id"]
    assert me["groups"] == [{"name": "alpha-owners", "roles": ["end-user"], "clients": ["alpha"]}]
    assert all(right["clients"] == ["alpha"] for right in me["rights"])


def test_a_wrong_password_and_an_unknown_user_answer_alike(served: Served) -> None:
    wrong = served.login("otto", "not the password")
    unknown = served.login("nobody", "not the password")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
    assert wrong.json()["error"] == unknown.json()["error"] == "LoginFailed"
    assert wrong.json()["message"] == unknown.json()["message"]
    # An unknown name costs one argon2id verification too: the same class of time.
    timings: dict[str, list[float]] = {"otto": [], "nobody": []}
    for _round in range(5):
        for user, times in timings.items():
            started = time.perf_counter()
            assert served.login(user, "not the password").status_code == 401
            times.append(time.perf_counter() - started)
    known, missing = (statistics.median(timings[u]) for u in ("otto", "nobody"))
    assert 0.5 < missing / known < 2, (known, missing)
    # Bad input is a 400 in the error shape, never a traceback.
    for body in ({"user": "otto"}, {"user": "", "password": "x"}, {"user": 1, "password": "x"}):
        refused = served.http.post("/api/v1/login", json=body)
        assert refused.status_code == 400 and refused.json()["error"] == "UsageError", body
    form = served.http.post(
        "/api/v1/login",
        content=json.dumps({"user": "otto", "password": PASSWORD}),
        headers={"Content-Type": "text/plain"},
    )
    assert form.status_code == 400 and "set-cookie" not in form.headers


def test_every_attempt_is_audited_never_with_its_password(served: Served) -> None:
    before = len(login_records(served.site))
    assert served.login("otto", "a wrong guess").status_code == 401
    assert served.login("nobody", "another guess").status_code == 401
    ok = served.login("otto")
    assert ok.status_code == 200
    records = login_records(served.site)[before:]
    assert [
        (r["actor"], r["target"], r["outcome"], r["detail"].get("reason")) for r in records
    ] == [
        ("user:otto", "user:otto", "failed", "wrong password"),
        ("user:nobody", "user:nobody", "failed", "unknown user"),
        ("user:otto", "user:otto", "ok", None),
    ]
    assert all(r["source"] == "127.0.0.1" for r in records)
    assert records[-1]["detail"]["session"] == ok.json()["session_id"]
    every = json.dumps(served.site.sql("SELECT * FROM audit_records"), default=str)
    for password in (PASSWORD, "a wrong guess", "another guess"):
        assert password not in every


def test_a_cookie_reads_and_changes_things_only_with_its_csrf_token(served: Served) -> None:
    browser = served.session("otto")
    assert browser.ask("GET", "/api/v1/snapshots").status_code == 200
    backup = "/api/v1/clients/alpha/backup"
    missing = browser.ask("POST", backup)
    assert missing.status_code == 403 and missing.json()["error"] == "CsrfRefused"
    wrong = browser.ask("POST", backup, csrf="x" * 43)
    assert wrong.status_code == 403 and wrong.json()["error"] == "CsrfRefused"
    other = served.session("otto")  # another session's token is not this one's
    assert browser.ask("POST", backup, csrf=other.csrf).status_code == 403
    queued = browser.ask("POST", backup, csrf=browser.csrf)
    assert queued.status_code == 202, queued.text
    # The audit log names the session's user.
    actors = served.site.sql(
        "SELECT actor FROM audit_records WHERE action = 'jobs.add' AND request_id = :r",
        r=queued.headers["x-request-id"],
    )
    assert actors == [("user:otto",)]
    # A bearer token needs no CSRF token (a browser never sends one by itself).
    token = served.site.cli("token", "create", "--user", "otto", "--scope", "operate")
    assert token.code == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    assert served.http.post(backup, headers=headers).status_code == 202
    # No cookie, no token; a cookie that is no session: 401.
    assert served.http.get("/api/v1/snapshots").status_code == 401
    forged = served.http.get("/api/v1/snapshots", headers={"Cookie": f"{COOKIE}={'0' * 64}"})
    assert forged.status_code == 401
    junk = served.http.get("/api/v1/snapshots", headers={"Cookie": f"{COOKIE}=../x"})
    assert junk.status_code == 401 and junk.json()["error"] == "NotAuthenticated"


def test_an_end_users_session_sees_only_its_client(served: Served) -> None:
    browser = served.session("eve")
    own, other = served.objects["alpha"]["snapshot"], served.objects["beta"]["snapshot"]
    assert browser.ask("GET", f"/api/v1/snapshots/{own}").status_code == 200
    hidden = browser.ask("GET", f"/api/v1/snapshots/{other}")
    assert hidden.status_code == 404 and hidden.json()["error"] == "SnapshotNotFound"
    listed = browser.ask("GET", "/api/v1/snapshots").json()
    assert {s["client"] for s in listed} == {"alpha"}
    # Its own client: end-user has no backups.run (403), another's does not exist (404).
    assert browser.ask("POST", "/api/v1/clients/alpha/backup", csrf=browser.csrf).status_code == 403
    assert browser.ask("POST", "/api/v1/clients/beta/backup", csrf=browser.csrf).status_code == 404


def test_logging_out_ends_the_session(served: Served) -> None:
    browser = served.session("otto")
    assert browser.ask("POST", "/api/v1/logout").status_code == 403  # no CSRF token
    ended = browser.ask("POST", "/api/v1/logout", csrf=browser.csrf)
    assert ended.status_code == 200, ended.text
    assert ended.json()["state"] == "revoked"
    assert _cookie_value(ended) in ('""', "")  # cleared
    assert "max-age=0" in _cookie_flags(ended)
    gone = browser.ask("GET", "/api/v1/session")
    assert gone.status_code == 401 and "ended" in gone.json()["message"]
    # A token has no session to log out of.
    token = served.site.cli("token", "create", "--user", "otto", "--scope", "read")
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    assert served.http.post("/api/v1/logout", headers=headers).status_code == 400


def test_an_expired_session_is_refused(served: Served) -> None:
    idle = served.session("otto")
    served.site.sql(
        "UPDATE login_sessions SET expires_at = :t WHERE id LIKE :p",
        t=_ago(minutes=1),
        p=f"{idle.id}%",
    )
    refused = idle.ask("GET", "/api/v1/session")
    assert refused.status_code == 401 and "expired" in refused.json()["message"]
    # Used or not, a session ends 12 hours after its login.
    old = served.session("otto")
    served.site.sql(
        "UPDATE login_sessions SET created_at = :t WHERE id LIKE :p",
        t=_ago(hours=13),
        p=f"{old.id}%",
    )
    assert old.ask("GET", "/api/v1/session").status_code == 401
    listed = {s["id"]: s["state"] for s in session_cli(served.site, "list", "--json").json()}
    assert listed[idle.id] == listed[old.id] == "expired"


def test_sessions_are_listed_and_revoked(served: Served) -> None:
    ada, otto = served.session("ada"), served.session("otto")
    # Own sessions only, unless users.manage.
    mine = otto.ask("GET", "/api/v1/sessions").json()
    assert mine and {s["user"] for s in mine} == {"otto"}
    assert otto.ask("GET", "/api/v1/sessions", params={"user": "ada"}).json() == []
    every = {s["user"] for s in ada.ask("GET", "/api/v1/sessions").json()}
    assert {"ada", "otto"} <= every
    assert all("csrf" not in json.dumps(s) for s in mine)
    # Another user's session does not exist for otto; ada may end it.
    hidden = otto.ask("DELETE", f"/api/v1/sessions/{ada.id}", csrf=otto.csrf)
    assert hidden.status_code == 404 and hidden.json()["error"] == "SessionNotFound"
    assert otto.ask("DELETE", f"/api/v1/sessions/{'f' * 12}", csrf=otto.csrf).status_code == 404
    assert ada.ask("DELETE", f"/api/v1/sessions/{otto.id}").status_code == 403  # no CSRF
    revoked = ada.ask("DELETE", f"/api/v1/sessions/{otto.id}", csrf=ada.csrf)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert otto.ask("GET", "/api/v1/session").status_code == 401
    assert ada.ask("GET", "/api/v1/session").status_code == 200
    # costor session list / revoke, on the site.
    listed = session_cli(served.site, "list", "--user", "ada")
    assert listed.code == 0 and ada.id in listed.stdout and "active" in listed.stdout
    assert ada.secret not in listed.stdout
    ended = session_cli(served.site, "revoke", ada.id)
    assert ended.code == 0 and f"session {ada.id} of ada revoked" in ended.stdout
    assert ada.ask("GET", "/api/v1/session").status_code == 401
    unknown = session_cli(served.site, "revoke", "nonsense")
    assert unknown.code == 1 and "No login session 'nonsense'" in unknown.stderr
    actions = served.site.sql(
        "SELECT actor, target, outcome FROM audit_records WHERE action = 'session.revoke'"
    )
    assert ("user:ada", f"session:{otto.id}", "ok") in actions
    assert ("user:otto", f"session:{ada.id}", "failed") in actions


def test_a_removed_users_session_stops_working(served: Served) -> None:
    browser = served.session("gone")
    assert browser.ask("GET", "/api/v1/session").status_code == 200
    site = served.site
    text = site.inventory.read_text()
    site.inventory.write_text(text.replace(f'[users.gone]\ngroups = ["ops"]\n{SECRET}\n', ""))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("COSTOR_TEST_USER_PASSWORD", PASSWORD)
            applied = site.cli("apply", "--auto-approve")
        assert applied.code == 0, applied.stderr
        deadline = time.monotonic() + 30  # the server sees an apply within 2 s
        while browser.ask("GET", "/api/v1/session").status_code != 401:
            assert time.monotonic() < deadline, "the removed user's session still works"
            time.sleep(0.2)
        assert "no longer exists" in browser.ask("GET", "/api/v1/session").json()["message"]
    finally:
        site.inventory.write_text(text)


# --- throttling: servers of their own -------------------------------------------------


@pytest.fixture(scope="module")
def strict_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site of its own (one `costor serve` per SQLite state), with the same users."""
    root = tmp_path_factory.mktemp("throttled")
    source = root / "src-alpha"
    source.mkdir()
    inventory = write_tables(root, *local_tables({"alpha": [source]}), USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
    return site


@pytest.fixture
def strict(strict_site: Site) -> Iterator[Served]:
    """A server that throttles after 3 failures per user, 6 per address, 1 s doubled up
    to 2 s, and ends sessions idle for 2 s."""
    policy = "user_failures=3,address_failures=6,delay=1s,max_delay=2s,idle=2s"
    process, base_url = serve_with_policy(strict_site, policy)
    served = Served(strict_site, base_url, process)
    try:
        yield served
    finally:
        served.http.close()
        stop_serve(process)


def test_failed_logins_are_slowed_per_user(strict: Served) -> None:
    for _attempt in range(3):
        assert strict.login("otto", "guess").status_code == 401
    refused = strict.login("otto")  # the right password, too early: not even checked
    assert refused.status_code == 429
    assert refused.json()["error"] == "LoginThrottled"
    assert "for this user" in refused.json()["message"]
    assert refused.headers["retry-after"] == "1"
    assert "set-cookie" not in refused.headers
    # Another user from the same address is not held back by otto's failures.
    assert strict.login("ada").status_code == 200
    time.sleep(1.1)
    assert strict.login("otto").status_code == 200  # the delay passed; the count cleared
    for _attempt in range(3):
        assert strict.login("otto", "guess").status_code == 401
    assert strict.login("otto", "guess").status_code == 429
    records = [r for r in login_records(strict.site) if r["actor"] == "user:otto"][-5:]
    assert [r["detail"].get("reason") for r in records] == [
        None,
        "wrong password",
        "wrong password",
        "wrong password",
        "throttled",
    ]


def test_failed_logins_are_slowed_per_address_across_users(strict: Served) -> None:
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):  # unknown names: failures all the same
        assert strict.login(user, "guess").status_code == 401
    refused = strict.login("ada")  # a user of its own, right password: the address waits
    assert refused.status_code == 429, refused.text
    assert "from this address" in refused.json()["message"]
    assert int(refused.headers["retry-after"]) >= 1
    time.sleep(float(refused.headers["retry-after"]) + 0.1)
    assert strict.login("ada").status_code == 200


def test_a_session_left_idle_expires(strict: Served) -> None:
    browser = strict.session("eve")
    assert browser.ask("GET", "/api/v1/session").status_code == 200
    time.sleep(2.2)
    refused = browser.ask("GET", "/api/v1/session")
    assert refused.status_code == 401 and "expired" in refused.json()["message"]


def test_the_cookie_is_secure_over_tls(tmp_path: Path, source: Path) -> None:
    self_signed(tmp_path)
    port = free_port()
    tables = local_tables({"alpha": [source]})
    tables[0] = site_table(
        "hq", f'listen = "127.0.0.1:{port}"', 'tls = { cert = "site.crt", key = "site.key" }'
    )
    inventory = write_tables(tmp_path, *tables, USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSTOR_TEST_USER_PASSWORD", PASSWORD)
        assert site.cli("apply", "--auto-approve").code == 0
    process = site.process("serve", "--tick", "0.2", env=ENV)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "site.crt"))
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", verify=context)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        response = httpx.post(
            f"{url}/api/v1/login", json={"user": "otto", "password": PASSWORD}, verify=context
        )
        assert response.status_code == 200, response.text
        assert {"secure", "httponly", "samesite=strict"} <= _cookie_flags(response)
    finally:
        stop_serve(process)


# --- the throttle and the policy, without a server -------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_delay_doubles_up_to_its_limit_and_is_forgotten() -> None:
    clock = FakeClock()
    policy = LoginPolicy.parse(
        "user_failures=2,address_failures=100,delay=1s,max_delay=4s,forget=1h"
    )
    throttle = LoginThrottle(policy, clock=clock)
    waits = []
    for _attempt in range(6):
        try:
            throttle.attempt("otto", "192.0.2.1")
        except LoginThrottled as refused:
            waits.append(refused.fields["retry_after"])
            clock.now += refused.fields["retry_after"]
            throttle.attempt("otto", "192.0.2.1")  # allowed once the wait has passed
    assert waits == [1, 2, 4, 4]  # after 2 free failures: 1 s, doubled, at most 4 s
    clock.now += 3601  # an hour without a failure: the count starts again
    throttle.attempt("otto", "192.0.2.1")
    throttle.attempt("otto", "192.0.2.1")
    with pytest.raises(LoginThrottled, match="for this user"):
        throttle.attempt("otto", "192.0.2.1")
    throttle = LoginThrottle(policy, clock=clock)
    throttle.attempt("otto", "192.0.2.1")
    throttle.attempt("otto", "192.0.2.1")
    throttle.succeeded("otto", "192.0.2.1")  # a success clears its user's count
    throttle.attempt("otto", "192.0.2.1")


def test_an_ipv6_host_is_counted_by_its_64() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(LoginPolicy.parse("user_failures=100,address_failures=2"), clock=clock)
    throttle.attempt("a", "2001:db8:1:2::1")
    throttle.attempt("b", "2001:db8:1:2::ffff")
    with pytest.raises(LoginThrottled, match="from this address"):
        throttle.attempt("c", "2001:db8:1:2:aaaa::1")
    throttle.attempt("c", "2001:db8:1:3::1")  # another /64


def test_a_bad_policy_names_its_item() -> None:
    assert LoginPolicy.parse("").lifetime.total_seconds() == 12 * 3600
    assert LoginPolicy.parse(" idle = 30m , delay=2s").idle.total_seconds() == 1800
    for text, why in [
        ("idle", "expected key=value"),
        ("idle=soon", "expected a duration"),
        ("user_failures=0", "at least 1"),
        ("delay=0s", "above 0"),
        ("colour=blue", "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=f"COSTOR_LOGIN_POLICY: '{text}': .*{why}"):
            LoginPolicy.parse(text)
