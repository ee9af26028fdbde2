"""The inventory digest: stable across formatting, changed by any setting, blind to
secret values (plans use it to refuse to apply once stale)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from costor.config import check_inventory, load_inventory

WriteInventory = Callable[..., Path]

CLIENT = """
[clients.web1]
site = "hq"
pool = "main"
paths = ["/srv"]
exclude = ["*.tmp"]
"""

# The same settings, written differently: comments, key order, dotted keys, inline tables.
CLIENT_REWRITTEN = """
[clients]
# the web server
web1 = { paths = ["/srv"], pool = "main", site = "hq", exclude = ["*.tmp"], one_file_system = false }
"""


def test_digest_is_stable(write_inventory: WriteInventory) -> None:
    first = load_inventory(write_inventory(CLIENT)).digest()
    assert first == load_inventory(write_inventory(CLIENT)).digest()
    assert len(first) == 64 and int(first, 16) >= 0


def test_digest_ignores_formatting_and_explicit_defaults(write_inventory: WriteInventory) -> None:
    assert (
        load_inventory(write_inventory(CLIENT)).digest()
        == load_inventory(write_inventory(CLIENT_REWRITTEN)).digest()
    )


def test_digest_changes_with_any_setting(write_inventory: WriteInventory) -> None:
    before = load_inventory(write_inventory(CLIENT)).digest()
    after = load_inventory(write_inventory(CLIENT.replace("*.tmp", "*.temp"))).digest()
    assert before != after


def test_digest_ignores_secret_values(
    write_inventory: WriteInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_inventory(CLIENT)
    first = load_inventory(path, resolve_secrets=True).digest()
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "another passphrase")
    assert load_inventory(path, resolve_secrets=True).digest() == first


def test_resolved_defaults(write_inventory: WriteInventory, tmp_path: Path) -> None:
    inventory = load_inventory(write_inventory(CLIENT))
    assert inventory.path == tmp_path / "inventory.toml"
    assert inventory.base_dir == tmp_path
    assert inventory.costor.state_dir == tmp_path / ".costor"
    assert inventory.costor.database == f"sqlite:///{tmp_path}/.costor/state.db"
    assert inventory.costor.profile_paths == (tmp_path / "profiles",)
    pool = inventory.pools["main"]
    assert pool.path == tmp_path / "pool"
    assert (pool.encryption, pool.kdf, pool.pack_size_mib) == ("aes-256-gcm", "argon2id", 32)
    assert (pool.compression.algorithm, pool.compression.level) == ("zstd", 3)
    assert pool.name == "main" and inventory.clients["web1"].name == "web1"
    with pytest.raises(ValidationError, match="frozen"):
        pool.path = None


def test_relative_sqlite_database_is_relative_to_the_inventory(
    write_inventory: WriteInventory, tmp_path: Path
) -> None:
    inventory = load_inventory(write_inventory('[costor]\ndatabase = "sqlite:///db/state.db"\n'))
    assert inventory.costor.database == f"sqlite:///{tmp_path}/db/state.db"


def test_postgresql_urls_use_psycopg_and_carry_no_password(write_inventory: WriteInventory) -> None:
    plain = load_inventory(
        write_inventory('[costor]\ndatabase = "postgresql://costor@db/costor"\n')
    )
    assert plain.costor.database == "postgresql+psycopg://costor@db/costor"
    for bad, message in (
        ("mysql://db/costor", "unsupported database URL 'mysql://'"),
        ("postgresql+psycopg://costor:s3cret@db/costor", "contains a password"),
        ("postgresql://costor@db/costor?password=s3cret", "contains a password"),
    ):
        inventory, diagnostics = check_inventory(write_inventory(f'[costor]\ndatabase = "{bad}"\n'))
        assert inventory is None
        assert [d.key for d in diagnostics] == ["costor.database"]
        assert message in diagnostics[0].message and "s3cret" not in diagnostics[0].message
