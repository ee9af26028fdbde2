"""The site server for real: a `costor serve --listen 127.0.0.1:PORT` process, asked
over HTTP with httpx, on SQLite and (the suite's PostgreSQL pass) PostgreSQL.

One served site for the module (two clients, three snapshots, users and tokens): each
test reads it; none changes what another reads (the revocation test revokes a token of
its own).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import ENV, start_serve, stop_serve
from support.fixtures import CliResult, Site
from support.inventory import local_tables, write_tables

from costor.server.schemas import SnapshotDocument
from costor.store.snapshot import Snapshot

USERS = """
[policies.nightly]
schedule = "0 2 * * *"

[groups.admins]
roles = ["admin"]

[groups.viewers]
roles = ["viewer"]

[users.alice]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.bob]
groups = ["viewers"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""


class Served:
    """The served site: its CLI, its HTTP client, its tokens."""

    def __init__(self, site: Site, base_url: str, process: subprocess.Popen[bytes]) -> None:
        self.site = site
        self.base_url = base_url
        self.process = process
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.tokens: dict[str, str] = {}

    def cli(self, *args: str) -> CliResult:
        """``costor ARGS`` in this process."""
        return self.site.cli(*args)

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.code == 0, result.stderr
        return result.json()

    def get(self, url: str, token: str | None = "admin", **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return self.http.get(url, headers=headers, params=params)

    def token(self, *args: str) -> str:
        result = self.cli("token", "create", *args)
        assert result.code == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    sources = {}
    for name in ("alpha", "beta"):
        source = root / f"src-{name}"
        (source / "docs" / "deep").mkdir(parents=True)
        (source / "docs" / "readme.txt").write_text(f"hello {name}\n" * 50)
        (source / "docs" / "deep" / "data.bin").write_bytes(os.urandom(100_000))
        (source / "top.txt").write_text("top\n")
        (source / "link").symlink_to("top.txt")  # an entry with a target
        sources[name] = [source]
    tables = local_tables(sources)
    tables = [
        t.replace("\n", '\npolicy = "nightly"\n', 1) if t.startswith("[clients.") else t
        for t in tables
    ]
    inventory = write_tables(root, *tables, USERS)
    site = Site(root, inventory, root / "pool")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        assert site.cli("apply", "--auto-approve").code == 0
        for name in ("alpha", "beta", "alpha"):
            result = site.cli("backup", name)
            assert result.code == 0, result.stderr
        process, base_url = start_serve(site)
        served = Served(site, base_url, process)
        try:
            served.tokens["admin"] = served.token("--user", "alice", "--scope", "admin")
            served.tokens["read"] = served.token("--user", "bob", "--scope", "read")
            served.tokens["alpha"] = served.token(
                "--user", "bob", "--scope", "read", "--clients", "alpha"
            )
            yield served
        finally:
            served.http.close()
            stop_serve(process)


def test_healthz_needs_no_token_and_every_response_has_a_request_id(served: Served) -> None:
    health = served.get("/healthz", token=None)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for path, token in [
        ("/healthz", None),
        ("/api/v1/status", "admin"),
        ("/api/v1/status", None),
        ("/api/v1/snapshots/ffff", "admin"),
        ("/api/v1/nothing-here", "admin"),
    ]:
        response = served.get(path, token=token)
        assert len(response.headers["X-Request-Id"]) >= 16, path
    # A caller's (a proxy's) request id is kept, and named in an error's body.
    response = served.http.get("/api/v1/status", headers={"X-Request-Id": "proxy-42"})
    assert response.headers["X-Request-Id"] == "proxy-42"
    assert response.json()["request_id"] == "proxy-42"


def test_no_bad_revoked_or_expired_token_is_401(served: Served) -> None:
    site = served.site
    served.tokens["doomed"] = served.token("--user", "bob", "--scope", "read")
    served.tokens["expired"] = served.token("--user", "bob", "--scope", "read", "--expires", "1h")
    assert served.get("/api/v1/status", token="doomed").status_code == 200
    revoked_id = served.tokens["doomed"].split("_")[1]
    assert served.cli("token", "revoke", revoked_id).code == 0
    expired_id = served.tokens["expired"].split("_")[1]
    site.sql("UPDATE api_tokens SET expires_at = created_at WHERE id = :id", id=expired_id)
    wrong = served.tokens["admin"][:-4] + "0000"
    for headers in [
        {},
        {"Authorization": "Basic YWxpY2U6eA=="},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": f"Bearer {served.tokens['doomed']}"},
        {"Authorization": f"Bearer {served.tokens['expired']}"},
    ]:
        response = served.http.get("/api/v1/snapshots", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        body = response.json()
        assert body["error"] == "NotAuthenticated"
        assert body["request_id"] == response.headers["X-Request-Id"]
        assert response.headers["WWW-Authenticate"] == "Bearer"
    listed = {t["id"]: t for t in served.cli_json("token", "list")}
    assert listed[revoked_id]["revoked_at"] is not None
    admin_id = served.tokens["admin"].split("_")[1]
    assert listed[admin_id]["last_used_at"] is not None  # noted at each use
    assert "token" not in listed[admin_id] and "secret_hash" not in listed[admin_id]


def same(api: Any, cli: Any) -> None:
    """The same JSON as ``--json`` prints: values, key order, numbers' types (0 vs 0.0)
    and which keys are absent (``taken_as``, ``target``), not only equal once parsed."""
    assert json.dumps(api) == json.dumps(cli)


def test_documents_equal_the_cli_json(served: Served) -> None:
    cli_status = served.cli_json("status")
    api_status = served.get("/api/v1/status").json()
    # Ages tick between the two reads; everything else is the same document.
    for document in (cli_status, api_status):
        for client in document["clients"]:
            client.pop("age_s")
        document.pop("instances")
    same(api_status, cli_status)
    api_clients = served.get("/api/v1/clients").json()
    for client in api_clients:
        client.pop("age_s")
    same(api_clients, cli_status["clients"])
    snapshots = served.cli_json("snapshots")
    assert len(snapshots) == 3
    same(served.get("/api/v1/snapshots").json(), snapshots)
    same(
        served.get("/api/v1/snapshots", client="beta").json(),
        served.cli_json("snapshots", "--client", "beta"),
    )
    first = snapshots[0]
    same(served.get(f"/api/v1/snapshots/{first['id']}").json(), first)
    same(served.get(f"/api/v1/snapshots/{first['short_id']}").json(), first)
    same(served.get("/api/v1/snapshots/alpha:latest").json(), snapshots[-1])
    listing = served.cli_json("ls", first["id"])
    assert any("target" in e for e in listing) and not all("target" in e for e in listing)
    docs = next(e["path"] for e in listing if e["path"].endswith("/docs"))
    for path in ("/", docs):
        tree = served.get(f"/api/v1/snapshots/{first['id']}/tree", path=path)
        assert tree.status_code == 200, tree.text
        same(tree.json(), served.cli_json("ls", first["id"], path))
    same(served.get("/api/v1/jobs").json(), served.cli_json("jobs"))
    job = served.cli_json("jobs")[0]
    same(served.get(f"/api/v1/jobs/{job['id']}").json(), job)
    pools = served.get("/api/v1/pools").json()
    assert [p["pool"] for p in pools] == ["main"]
    assert pools[0]["snapshots"] == 3 and pools[0]["bytes_stored"] > 0


def test_models_keep_the_documents_optional_keys_absent() -> None:
    """A renamed client's snapshot carries ``taken_as``; others have no such key (never
    null): the routes' models give back exactly the document (exclude_unset)."""
    renamed = Snapshot(
        client="web", time="2026-12-07T10:00:00.000000Z", paths=["/srv"], tree="cd" * 32
    )
    renamed.id = "ab" * 32
    renamed.counters, renamed.duration_s = {"files_new": 3}, 1.5
    for taken_as in ("web-old", None):
        renamed.taken_as = taken_as
        document = {**renamed.summary(), "pool": "main"}
        assert ("taken_as" in document) == (taken_as is not None)
        answered = SnapshotDocument.model_validate(document).model_dump(exclude_unset=True)
        assert json.dumps(answered) == json.dumps(document)


def test_a_tree_lists_as_many_levels_as_asked(served: Served) -> None:
    first = served.cli_json("snapshots")[0]["id"]
    everything = served.cli_json("ls", first)
    docs = next(e["path"] for e in everything if e["path"].endswith("/docs"))
    url = f"/api/v1/snapshots/{first}/tree"
    under = served.cli_json("ls", first, docs)
    assert [e["path"] for e in under] == [
        docs,
        f"{docs}/deep",
        f"{docs}/deep/data.bin",
        f"{docs}/readme.txt",
    ]
    # depth=1: the directory and its entries, not what its subdirectories hold.
    assert served.get(url, path=docs, depth=1).json() == [under[0], under[1], under[3]]
    assert served.get(url, path=docs, depth=0).json() == under[:1]
    assert served.get(url, path=docs, depth=2).json() == under
    assert served.get(url, path=docs).json() == under  # no depth: all, as costor ls
    # From the root: one level is the first component of the backed-up paths.
    top = served.get(url, path="/", depth=1).json()
    assert [e["path"] for e in top] == sorted({"/" + e["path"].split("/")[1] for e in everything})
    file = f"{docs}/readme.txt"
    assert served.get(url, path=file, depth=1).json() == under[3:]
    bad = served.get(url, path=docs, depth=-1)
    assert bad.status_code == 400 and bad.json()["error"] == "UsageError"


def test_snapshots_paginate_and_filter_by_time(served: Served) -> None:
    every = served.get("/api/v1/snapshots").json()
    pages, url = [], "/api/v1/snapshots?limit=2"
    while url:
        response = served.http.get(
            url, headers={"Authorization": f"Bearer {served.tokens['admin']}"}
        )
        assert response.headers["X-Total-Count"] == "3"
        pages.append(response.json())
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
    assert [len(page) for page in pages] == [2, 1]
    assert [s for page in pages for s in page] == every
    assert served.get("/api/v1/snapshots", offset=1, limit=1).json() == every[1:2]
    middle = every[1]["time"]
    assert served.get("/api/v1/snapshots", since=middle).json() == every[1:]
    assert served.get("/api/v1/snapshots", until=middle).json() == every[:1]
    bad = served.get("/api/v1/snapshots", since="yesterday")
    assert bad.status_code == 400 and bad.json()["error"] == "UsageError"
    assert served.get("/api/v1/snapshots", limit=0).status_code == 400


def test_a_token_limited_to_clients_sees_only_theirs(served: Served) -> None:
    every = served.get("/api/v1/snapshots").json()
    beta = next(s for s in every if s["client"] == "beta")
    alpha = next(s for s in every if s["client"] == "alpha")
    mine = served.get("/api/v1/snapshots", token="alpha").json()
    assert {s["client"] for s in mine} == {"alpha"} and len(mine) == 2
    assert served.get("/api/v1/snapshots", token="alpha", client="beta").json() == []
    for path in (f"/api/v1/snapshots/{beta['id']}", f"/api/v1/snapshots/{beta['id']}/tree"):
        response = served.get(path, token="alpha")
        assert response.status_code == 404, path  # never 403: it does not exist for them
        assert response.json()["error"] == "SnapshotNotFound"
    assert served.get("/api/v1/snapshots/beta:latest", token="alpha").status_code == 404
    # A prefix is matched among the token's snapshots only.
    assert served.get(f"/api/v1/snapshots/{beta['id'][:8]}", token="alpha").status_code == 404
    assert served.get(f"/api/v1/snapshots/{alpha['id'][:8]}", token="alpha").json() == alpha
    assert served.get("/api/v1/snapshots/alpha:latest", token="alpha").json() == mine[-1]
    assert served.get(f"/api/v1/snapshots/{alpha['id']}", token="alpha").json() == alpha
    status = served.get("/api/v1/status", token="alpha").json()
    assert [c["client"] for c in status["clients"]] == ["alpha"]
    assert "beta" not in json.dumps(status)
    assert [p["pool"] for p in served.get("/api/v1/pools", token="alpha").json()] == ["main"]
    assert {j["target"] for j in served.get("/api/v1/jobs", token="alpha").json()} == {"alpha"}
    # The unlimited read token sees both.
    assert len(served.get("/api/v1/snapshots", token="read").json()) == 3


def test_errors_map_to_statuses_in_one_shape(served: Served) -> None:
    missing = served.get("/api/v1/snapshots/0123456789abcdef")
    assert missing.status_code == 404
    body = missing.json()
    assert body["error"] == "SnapshotNotFound" and "0123456789abcdef" in body["message"]
    assert body["request_id"] == missing.headers["X-Request-Id"]
    first = served.get("/api/v1/snapshots").json()[0]["id"]
    no_path = served.get(f"/api/v1/snapshots/{first}/tree", path="/no/such")
    assert no_path.status_code == 404 and no_path.json()["error"] == "PathNotInSnapshot"
    assert served.get("/api/v1/jobs/999999").json()["error"] == "JobNotFound"
    assert served.get("/api/v1/jobs/not-a-number").status_code == 400
    unknown = served.get("/api/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"


def test_metrics_are_prometheus_text_read_from_the_state(served: Served) -> None:
    # A failed check of the pool, as a daemon would have recorded it (read at scrape time).
    # A failed check of the pool and a self-test of alpha that passed, as a daemon would
    # have recorded them (read at scrape time).
    when = served.get("/api/v1/snapshots").json()[0]["time"][:19].replace("T", " ")
    for kind, target, state, error in (
        ("check", "main", "failed", "damage found"),
        ("selftest", "alpha", "succeeded", None),
    ):
        served.site.sql(
            "INSERT INTO jobs (kind, target, state, trigger, site, run_after, created_at, "
            "finished_at, attempts, max_attempts, params, result, error, notified) VALUES "
            "(:kind, :target, :state, 'manual', 'hq', :t, :t, :t, 3, 3, '{}', '{}', :error, "
            "false)",
            kind=kind,
            target=target,
            state=state,
            error=error,
            t=when,
        )
    response = served.get("/metrics", token=None)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    labels = (("client", "alpha"), ("pool", "main"), ("site", "hq"))
    assert samples[("costor_client_rpo_seconds", labels)] == 2 * 24 * 3600  # twice the schedule
    assert 0 <= samples[("costor_client_last_backup_age_seconds", labels)] < 3600
    assert samples[("costor_client_last_backup_bytes", labels)] > 100_000
    assert samples[("costor_client_last_backup_duration_seconds", labels)] >= 0
    assert samples[("costor_pool_stored_bytes", (("pool", "main"),))] > 0
    assert samples[("costor_pool_snapshots", (("pool", "main"),))] == 3
    assert samples[("costor_up", ())] == 1
    assert samples[("costor_jobs_failed_total", (("kind", "check"),))] == 1
    main = (("pool", "main"),)
    assert samples[("costor_pool_last_check_ok", main)] == 0
    assert samples[("costor_pool_last_check_timestamp_seconds", main)] > 1.7e9
    assert samples[("costor_client_last_selftest_ok", labels)] == 1
    assert ("costor_client_last_selftest_ok", (("client", "beta"), *labels[1:])) not in samples
    assert samples[("costor_pool_compression_ratio", main)] > 0
    assert samples[("costor_pool_dedup_ratio", main)] > 1  # three snapshots of alike trees
    pool = served.get("/api/v1/pools").json()[0]
    assert pool["last_check"]["state"] == "failed" and pool["last_check"]["error"]
    assert pool["dedup_ratio"] == samples[("costor_pool_dedup_ratio", main)]
    assert pool["bytes_in_snapshots"] >= pool["bytes_raw"]
    assert not any(name.startswith("python_") for name, _labels in samples)  # own registry


def test_the_served_openapi_document_is_the_checked_in_one(served: Served) -> None:
    response = served.get("/api/v1/openapi.json", token=None)
    assert response.status_code == 200 and "X-Request-Id" in response.headers
    checked_in = Path(__file__).parents[2] / "docs" / "openapi.json"
    assert response.json() == json.loads(checked_in.read_text())
