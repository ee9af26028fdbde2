"""Secrets never leave their ``{ env }`` / ``{ file }``: not in plan output (text or JSON),
plan files, ``show``, apply's output, error messages, or the state database in clear
(a user's password is stored only as an argon2id hash).

One inventory with every kind of secret — a pool passphrase, S3 access and secret keys
(against moto's S3 server), a user password read from a file — driven through every
command that could print one; then every byte written is searched for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import (
    client_table,
    env_secret,
    local_pool,
    s3_pool,
    site_table,
    write_tables,
)
from support.s3servers import S3Server, moto_server  # noqa: F401  (fixture)

PASSPHRASE = "pool-passphrase-7f3a91c2"
WRONG_PASSPHRASE = "wrong-passphrase-55e1d0"
PASSWORD = "alice-password-2b8e44d1"
NEW_PASSWORD = "alice-password-9c0d11aa"


def inventory(root: Path, source: Path, server: S3Server, bucket: str) -> Path:
    path = write_tables(
        root,
        site_table(),
        local_pool("local", passphrase_env="SECRET_TEST_PASSPHRASE", pack_size_mib=None),
        s3_pool(
            "cloud",
            server.endpoint,
            bucket,
            prefix=None,
            access_key=env_secret("SECRET_TEST_S3_ACCESS"),
            secret_key=env_secret("SECRET_TEST_S3_SECRET"),
            passphrase_env="SECRET_TEST_PASSPHRASE",
        ),
        client_table("alpha", [source], pool="local", transport=None),
        '[groups.ops]\nroles = ["admin"]\n',
        '[users.alice]\ngroups = ["ops"]\npassword = { file = "alice.secret" }\n',
    )
    secret_file = root / "alice.secret"
    secret_file.write_text(PASSWORD + "\n")
    secret_file.chmod(0o600)
    return path


def test_no_secret_is_ever_printed_or_stored(
    moto_server: S3Server,  # noqa: F811
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_TEST_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("SECRET_TEST_S3_ACCESS", moto_server.access_key)
    monkeypatch.setenv("SECRET_TEST_S3_SECRET", moto_server.secret_key)
    site = Site(
        tmp_path,
        inventory(tmp_path, source, moto_server, moto_server.new_bucket()),
        tmp_path / "pool",
    )
    secrets = [PASSPHRASE, WRONG_PASSPHRASE, PASSWORD, NEW_PASSWORD, moto_server.secret_key]
    seen: list[str] = []

    def run(*args: str, code: int = 0) -> str:
        result = site.cli(*args)
        assert result.code == code, result.stdout + result.stderr
        seen.append(result.stdout + result.stderr)
        return result.stdout

    run("validate")
    run("validate", "--json")
    planfile = tmp_path / "first.plan"
    run("plan")
    document = json.loads(run("plan", "--json"))
    # The keyed digest of the secrets stays in the signed plan file: printed, with the
    # state's plan key it would let anyone test guesses of a passphrase offline.
    assert "secrets_digest" not in document["binding"]
    passphrase = next(c for c in document["resource_changes"] if c["address"] == "pool.local")[
        "change"
    ]
    assert passphrase["after"]["passphrase"] == "(sensitive)"
    assert passphrase["after_sensitive"]["passphrase"] is True
    run("plan", "--out", str(planfile))
    run("show", str(planfile))
    assert "secrets_digest" not in json.loads(run("show", str(planfile), "--json"))["binding"]
    run("apply", str(planfile))
    run("apply", "--auto-approve", "--json")
    run("backup", "alpha", "--json")

    # A changed password is an update whose value is never shown.
    (tmp_path / "alice.secret").write_text(NEW_PASSWORD)
    changed = json.loads(run("plan", "--json"))
    [update] = [c for c in changed["resource_changes"] if c["change"]["actions"] == ["update"]]
    assert update["address"] == "user.alice" and "password changed" in update["reason"]
    human = run("plan")
    assert "~ password = (sensitive) -> (sensitive)" in human
    second_plan = tmp_path / "second.plan"
    run("plan", "--out", str(second_plan))
    run("apply", str(second_plan), "--json")
    [(stored_hash,)] = site.sql("SELECT password_hash FROM users WHERE name = 'alice'")
    assert stored_hash.startswith("$argon2id$")

    # Errors: a wrong passphrase while adopting the pool after the state was lost.
    site.lose_state()
    monkeypatch.setenv("SECRET_TEST_PASSPHRASE", WRONG_PASSPHRASE)
    failed = site.run_process("apply", "--auto-approve")
    assert failed.code == 1 and "does not open the pool" in failed.stderr
    seen.append(failed.stdout + failed.stderr)
    monkeypatch.setenv("SECRET_TEST_PASSPHRASE", PASSPHRASE)
    run("apply", "--auto-approve")

    written = [planfile.read_bytes().decode(), second_plan.read_bytes().decode()]
    state_text = database_text(site)
    for secret in secrets:
        for text in seen + written:
            assert secret not in text
        assert secret not in state_text
    assert PASSWORD not in state_text and "$argon2id$" in state_text  # hashed, not lost


def database_text(site: Site) -> str:
    """Every value in every table of the state, and (SQLite) the raw database files."""
    url = site.database_url
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        raw = b"".join(f.read_bytes() for f in database.parent.glob(database.name + "*"))
        tables = [
            name for (name,) in site.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
    else:
        raw = b""
        tables = [
            name
            for (name,) in site.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
    rows = [str(site.sql(f'SELECT * FROM "{table}"')) for table in tables]
    assert "resources" in tables and "users" in tables
    return "\n".join(rows) + raw.decode("utf-8", errors="replace")
