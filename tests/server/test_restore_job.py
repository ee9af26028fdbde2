"""A restore as a job through the API (``POST /api/v1/snapshots/{id}/restore``), against
a real `costor serve` whose daemon runs it onto a real host through the test sshd: to
the snapshot's own client (as root, owners kept) and to another client (an ordinary
user); what it refuses before queueing; a host that cannot write fails the job with
tar's message; an end user restores only between their own clients."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving import ENV, start_serve, stop_serve
from support.fixtures import Site, tree_digest
from support.inventory import BASE_TABLES, local_tables, ssh_client, write_tables
from support.sshd import Sshd, make_tree, remote_dir, sshd  # noqa: F401  (fixtures)

from costor.cli.main import main

USERS = """
[groups.admins]
roles = ["admin"]

[groups.web-owners]
roles = ["end-user"]
clients = ["web"]

[users.ada]
groups = ["admins"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }

[users.eve]
groups = ["web-owners"]
password = { env = "COSTOR_TEST_USER_PASSWORD" }
"""
ENDED = ("succeeded", "failed", "interrupted", "cancelled")


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    def wait(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = dict(self.http.get(f"/api/v1/jobs/{job_id}").json())
            if job["state"] in ENDED:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not end")


def _token(inventory: Path, user: str, scope: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["token", "create", "-c", str(inventory), "--user", user, "--scope", scope])
    assert code == 0, err.getvalue()
    return out.getvalue().strip()


@pytest.fixture
def served(
    tmp_path: Path,
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Site, Path, Api, Api]]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    src = make_tree(remote_dir)
    (src / "etc" / "hosts").chmod(0o644)  # the ordinary user reads it back too
    tables = [
        *BASE_TABLES,
        ssh_client("web", sshd, [src]),
        ssh_client("lab", sshd, [remote_dir / "nothing"], user="costortest"),
    ]
    (remote_dir / "nothing").mkdir()
    site = Site(tmp_path, write_tables(tmp_path, *tables, USERS), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    backup = site.cli("backup", "web", "--json")
    assert backup.code == 0, backup.err
    os.chown(src / "etc" / "hosts", 1, 1)  # after the backup: owners the restore must keep
    process, base_url = start_serve(site)
    admin = Api(base_url, _token(site.inventory, "ada", "admin"))
    owner = Api(base_url, _token(site.inventory, "eve", "operate"))
    try:
        yield site, src, admin, owner
    finally:
        admin.http.close()
        owner.http.close()
        stop_serve(process)


def _restore(api: Api, snapshot: str, body: dict[str, Any]) -> httpx.Response:
    return api.http.post(f"/api/v1/snapshots/{snapshot}/restore", json=body)


def test_a_restore_job_puts_the_snapshot_back_on_a_host(
    served: tuple[Site, Path, Api, Api],
    remote_dir: Path,  # noqa: F811
) -> None:
    site, src, admin, _owner = served
    # The snapshot's own host, as root: the tree as it was, owners included.
    target = remote_dir / "back"
    response = _restore(admin, "web:latest", {"target": str(target)})
    assert response.status_code == 202, response.text
    job = response.json()
    # The document is read after the job is queued: the scheduler (ticking every
    # 0.2 s) may have claimed it already, which a slow machine showed once in CI.
    assert (job["kind"], job["target"]) == ("restore", "web")
    assert job["state"] in ("queued", "running"), job
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    done = admin.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    restored = target / src.relative_to("/")
    os.chown(src / "etc" / "hosts", 0, 0)
    assert tree_digest(restored) == tree_digest(src)
    assert done["result"]["target"] == f"web:{target}" and done["result"]["files_written"] >= 4
    # Another client's machine, as an ordinary user, one path of the snapshot.
    elsewhere = remote_dir / "lab-copy"
    body = {"target": str(elsewhere), "client": "lab", "path": str(src / "etc")}
    done = admin.wait(_restore(admin, "web:latest", body).json()["id"])
    assert done["state"] == "succeeded", done["error"]
    copied = elsewhere / "etc"  # a path is restored under its own name, as --target does
    assert (copied / "hosts").read_bytes() == (src / "etc" / "hosts").read_bytes()
    assert (copied / "deep" / "big.bin").read_bytes() == (src / "etc/deep/big.bin").read_bytes()
    assert [p.name for p in elsewhere.iterdir()] == ["etc"]
    # Audited: who asked (the token), and the restore itself (the daemon's job).
    records = site.cli("audit", "--json").json()
    asked = [r for r in records if r["action"] == "jobs.add" and r["target"] == "client:lab"]
    assert asked and asked[-1]["detail"]["params"]["target"] == str(elsewhere)
    restores = [r for r in records if r["action"] == "restore" and r["outcome"] == "ok"]
    assert len(restores) >= 2


def test_what_a_restore_job_refuses_before_it_is_queued(
    served: tuple[Site, Path, Api, Api],
) -> None:
    _site, _src, admin, _owner = served
    for body, status in [
        ({"target": "/"}, 400),
        ({"target": "relative/dir"}, 400),
        ({"target": "/tmp/x", "include": ["/"]}, 400),  # an empty pattern
        ({"target": "/tmp/x", "client": "nobody"}, 404),
        ({"target": "/tmp/x", "surprise": 1}, 400),
        ({}, 400),
    ]:
        response = _restore(admin, "web:latest", body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] and response.json()["request_id"]
    assert _restore(admin, "nobody:latest", {"target": "/tmp/x"}).status_code == 404
    assert admin.http.get("/api/v1/jobs", params={"kind": "restore"}).json() == []


def test_a_host_that_cannot_write_fails_the_job_with_tars_message(
    served: tuple[Site, Path, Api, Api],
) -> None:
    _site, _src, admin, _owner = served
    # lab logs in as an ordinary user, who may not write under /root.
    body = {"target": "/root/costor-not-allowed", "client": "lab"}
    done = admin.wait(_restore(admin, "web:latest", body).json()["id"])
    assert done["state"] == "failed"
    assert "tar on the host" in done["error"] or "Permission denied" in done["error"]
    assert done["max_attempts"] == 1  # a failed restore is not retried behind the user's back
    assert not Path("/root/costor-not-allowed").exists()


def test_an_end_user_restores_only_onto_their_own_clients(
    served: tuple[Site, Path, Api, Api],
    remote_dir: Path,  # noqa: F811
) -> None:
    _site, _src, admin, owner = served
    # Another client's machine is not theirs: as if it did not exist.
    response = _restore(owner, "web:latest", {"target": str(remote_dir / "x"), "client": "lab"})
    assert response.status_code == 404 and response.json()["error"] == "UnknownResource"
    # Their own machine: allowed.
    response = _restore(owner, "web:latest", {"target": str(remote_dir / "mine")})
    assert response.status_code == 202, response.text
    assert admin.wait(response.json()["id"])["state"] == "succeeded"
    # A snapshot of a client they do not see is not found either.
    lab = admin.http.post("/api/v1/clients/lab/backup").json()
    snapshot_id = admin.wait(lab["id"])["result"]["snapshot_id"]
    response = _restore(owner, snapshot_id, {"target": str(remote_dir / "y")})
    assert response.status_code == 404 and response.json()["error"] == "SnapshotNotFound"


def test_a_local_client_restores_into_a_directory_of_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n" * 1000)
    (src / "b.bin").write_bytes(os.urandom(100_000))
    inventory = write_tables(tmp_path, *local_tables({"here": [src]}), USERS)
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "here").code == 0
    process, base_url = start_serve(site)
    admin = Api(base_url, _token(inventory, "ada", "admin"))
    try:
        target = tmp_path / "restored"
        done = admin.wait(_restore(admin, "here:latest", {"target": str(target)}).json()["id"])
        assert done["state"] == "succeeded", done["error"]
        assert tree_digest(target / src.relative_to("/")) == tree_digest(src)
        assert done["result"]["target"] == str(target)
    finally:
        admin.http.close()
        stop_serve(process)
