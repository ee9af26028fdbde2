"""A stream that outlives its first check (a job's events, the API's and the web UI's)
ends once what let it in no longer does: a revoked token, a session logged out. On a
real site: the real app, its gate, tokens and sessions in the real state database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from serving import ENV
from starlette.requests import Request
from support.fixtures import Site
from ui_site import make_site

from costor.ops.context import Context
from costor.ops.control.logins import LoginThrottle, configured_policy, log_in, log_out
from costor.server.app import create_app
from costor.server.events import JobEvent, while_authenticated
from costor.server.permissions import SESSION_COOKIE, still_authenticated


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    made = make_site(tmp_path_factory.mktemp("stream-auth"))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert made.cli("apply", "--auto-approve").code == 0
        yield made


def _request(inventory: Path, header: tuple[bytes, bytes]) -> Request:
    app = create_app(inventory)
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [header], "app": app})


async def _events(count: int, between: list[str]) -> AsyncIterator[JobEvent]:
    for number in range(count):
        between.append(f"event {number}")
        yield JobEvent(kind="log", data={"seq": number}, id=str(number))
        await asyncio.sleep(0)


def _read(request: Request, revoke_after: int, revoke: object) -> list[str]:
    async def run() -> list[str]:
        seen: list[str] = []
        async for event in while_authenticated(request, _events(5, [])):
            seen.append(event.id)
            if len(seen) == revoke_after:
                await asyncio.to_thread(revoke)  # type: ignore[arg-type]
        return seen

    return asyncio.run(run())


def test_a_token_revoked_mid_stream_ends_it(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTOR_EVENTS_RECHECK_S", "0")  # check before every event
    made = site.cli("token", "create", "--user", "ada", "--scope", "read", "--json")
    assert made.code == 0, made.stderr
    token, token_id = made.json()["token"], made.json()["id"]
    request = _request(site.inventory, (b"authorization", f"Bearer {token}".encode()))
    assert still_authenticated(request)
    seen = _read(request, 2, lambda: site.cli("token", "revoke", str(token_id)))
    assert seen == ["0", "1"]  # nothing after the revocation
    assert not still_authenticated(request)


def test_a_session_logged_out_mid_stream_ends_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTOR_EVENTS_RECHECK_S", "0")
    ctx = Context(site.inventory)
    throttle = LoginThrottle(configured_policy())
    session = log_in(
        ctx, user="eve", password=ENV["COSTOR_TEST_USER_PASSWORD"], address=None, throttle=throttle
    )
    cookie = f"{SESSION_COOKIE}={session.secret}".encode()
    request = _request(site.inventory, (b"cookie", cookie))
    seen = _read(request, 3, lambda: log_out(Context(site.inventory), session.secret))
    assert seen == ["0", "1", "2"]
    # Unchecked (the default: every 30 s), the same stream goes on to its end.
    monkeypatch.setenv("COSTOR_EVENTS_RECHECK_S", "30")
    assert _read(request, 99, lambda: None) == ["0", "1", "2", "3", "4"]
