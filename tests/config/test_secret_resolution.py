"""Secrets: read from the environment or a file, on demand, and never shown."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from costor.config import SecretRef, check_inventory, load_inventory, resolve_secret
from costor.errors import InventoryInvalid, SecretUnavailable

WriteInventory = Callable[..., Path]
SECRET = "s3cr3t-value-that-must-never-be-shown"


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTOR_TEST_SECRET", SECRET)
    assert resolve_secret(SecretRef(env="COSTOR_TEST_SECRET"), "pools.main.passphrase") == SECRET


def test_file_secret_loses_one_trailing_newline_only(tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text(SECRET + " \n\n")
    assert resolve_secret(SecretRef(file=secret_file), "k") == SECRET + " \n"


def test_file_secret_relative_to_the_inventory(
    write_inventory: WriteInventory, tmp_path: Path
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "alice").write_text(SECRET + "\n")
    os.chmod(tmp_path / "secrets" / "alice", 0o600)
    path = write_inventory(
        '[groups.ops]\n[users.alice]\ngroups = ["ops"]\npassword = { file = "secrets/alice" }\n'
    )
    inventory, diagnostics = check_inventory(path)
    assert diagnostics == []
    assert inventory is not None
    ref = inventory.users["alice"].password
    assert ref.file == tmp_path / "secrets" / "alice"
    assert resolve_secret(ref, "users.alice.password") == SECRET


def test_missing_env_names_the_key_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTOR_TEST_NOT_SET", raising=False)
    with pytest.raises(SecretUnavailable) as raised:
        resolve_secret(SecretRef(env="COSTOR_TEST_NOT_SET"), "pools.main.passphrase")
    assert str(raised.value) == (
        "Secret for pools.main.passphrase is not available: "
        "environment variable COSTOR_TEST_NOT_SET is not set"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "does not exist"), (b"", "is empty"), (b"\xff" + SECRET.encode(), "not UTF-8")],
)
def test_unreadable_file_secret(tmp_path: Path, content: bytes | None, reason: str) -> None:
    secret_file = tmp_path / "pass"
    if content is not None:
        secret_file.write_bytes(content)
    with pytest.raises(SecretUnavailable) as raised:
        resolve_secret(SecretRef(file=secret_file), "users.alice.password")
    assert reason in str(raised.value)
    assert "users.alice.password" in str(raised.value)
    # Neither the message nor the exception chain carries the content.
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def test_secret_values_never_appear_in_models_errors_or_diagnostics(
    write_inventory: WriteInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTOR_TEST_SECRET", SECRET)
    path = write_inventory(
        f"""
        [groups.ops]
        [users.alice]
        password = {{ env = "COSTOR_TEST_SECRET" }}
        [users.bob]
        password = "{SECRET}"
        [users.carol]
        password = {{ env = "X", value = "{SECRET}" }}
        """
    )
    with pytest.raises(InventoryInvalid) as raised:
        load_inventory(path)
    shown = [str(raised.value), repr(raised.value)]
    shown += [str(d) for d in raised.value.diagnostics] + [
        repr(d) for d in raised.value.diagnostics
    ]
    assert not [text for text in shown if SECRET in text]
    assert any("never literal" in text for text in shown)

    path = write_inventory(
        '[groups.ops]\n[users.alice]\npassword = { env = "COSTOR_TEST_SECRET" }\n'
    )
    inventory = load_inventory(path)
    assert SECRET not in repr(inventory) and SECRET not in inventory.canonical_json()


def test_load_inventory_does_not_need_the_secrets(
    write_inventory: WriteInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_inventory("")
    monkeypatch.delenv("COSTOR_TEST_PASSPHRASE")
    inventory = load_inventory(path)  # commands read the secrets they need, when they need them
    with pytest.raises(SecretUnavailable):
        resolve_secret(inventory.pools["main"].passphrase, "pools.main.passphrase")  # type: ignore[arg-type]
    with pytest.raises(InventoryInvalid) as raised:
        load_inventory(path, resolve_secrets=True)
    assert [d.key for d in raised.value.diagnostics] == ["pools.main.passphrase"]


def test_group_readable_secret_file_is_a_warning(
    write_inventory: WriteInventory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text(SECRET)
    os.chmod(tmp_path / "pw", 0o644)
    path = write_inventory('[users.alice]\npassword = { file = "pw" }\n')
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None
    assert [(d.severity, d.key) for d in diagnostics] == [("warning", "users.alice.password")]
    assert "readable by other users" in diagnostics[0].message
    assert inventory.warnings == tuple(diagnostics)
