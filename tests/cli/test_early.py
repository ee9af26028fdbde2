"""The pool's key derived ahead, during a new process's imports (costor/cli/early.py,
costor/util/argon2.py): the right slots are started from the inventory on disk, the
later derivation takes the result, and a guess that cannot be made does nothing."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from costor.cli import early
from costor.store import crypto
from costor.util import argon2

PASSPHRASE = "early passphrase"


@pytest.fixture(autouse=True)
def nothing_ahead() -> Iterator[None]:
    argon2._AHEAD.clear()
    yield
    argon2._AHEAD.clear()


def make_pool(root: Path, name: str) -> dict[str, object]:
    """A pool directory holding one real key slot (crypto.make_key_slot); its slot."""
    keys = root / name / "keys"
    keys.mkdir(parents=True)
    slot = crypto.make_key_slot(crypto.MasterKey.generate(), PASSPHRASE, "argon2id", "uuid")
    (keys / "0123456789abcdef").write_bytes(slot)
    document: dict[str, object] = json.loads(slot)
    return document


def inventory(root: Path) -> Path:
    path = root / "inventory.toml"
    path.write_text(
        """
[pools.first]
site = "hq"
backend = "local"
path = "first"
passphrase = { env = "EARLY_PASSPHRASE" }

[pools.second]
site = "hq"
backend = "local"
path = "second"
passphrase = { file = "second.pass" }

[clients.web]
site = "hq"
pool = "second"
transport = "local"
paths = ["/srv"]
"""
    )
    (root / "second.pass").write_text(PASSPHRASE + "\n")
    return path


def ahead_key(slot: dict[str, object]) -> tuple[bytes, bytes, int, int, int]:
    params = slot["params"]
    assert isinstance(params, dict)
    return argon2._key(
        PASSPHRASE.encode(),
        base64.b64decode(str(slot["salt"])),
        params["iterations"],
        params["lanes"],
        params["memory_cost_kib"],
    )


def test_backup_derives_its_clients_pool_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    first, second = make_pool(tmp_path, "first"), make_pool(tmp_path, "second")
    path = inventory(tmp_path)
    early.derive_ahead("backup", ["backup", "web", "-c", str(path), "--json"])
    assert set(argon2._AHEAD) == {ahead_key(second)}
    assert ahead_key(first) not in argon2._AHEAD


def test_snapshots_derive_every_pool_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    first, second = make_pool(tmp_path, "first"), make_pool(tmp_path, "second")
    monkeypatch.setenv("COSTOR_INVENTORY", str(inventory(tmp_path)))
    early.derive_ahead("snapshots", ["snapshots", "--json"])
    assert set(argon2._AHEAD) == {ahead_key(first), ahead_key(second)}


def test_a_derivation_takes_the_key_derived_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    slot = make_pool(tmp_path, "first")
    early.derive_ahead(
        "snapshots", ["snapshots", "--pool", "first", "-c", str(inventory(tmp_path))]
    )
    key = ahead_key(slot)
    assert set(argon2._AHEAD) == {key}
    params = slot["params"]
    assert isinstance(params, dict)
    salt = base64.b64decode(str(slot["salt"]))
    argon2._AHEAD[key].result(timeout=60)  # ended: derive() must not run again
    started = time.perf_counter()
    taken = argon2.derive(
        PASSPHRASE.encode(),
        salt,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_kib=params["memory_cost_kib"],
    )
    assert argon2._AHEAD == {}  # taken once
    expected = Argon2id(
        salt=salt,
        length=32,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_cost=params["memory_cost_kib"],
    ).derive(PASSPHRASE.encode())
    assert taken == expected
    assert time.perf_counter() - started < 1.0


def test_another_passphrase_is_derived_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", "not the one the pool was opened with")
    slot = make_pool(tmp_path, "first")
    early.derive_ahead(
        "snapshots", ["snapshots", "--pool", "first", "-c", str(inventory(tmp_path))]
    )
    params = slot["params"]
    assert isinstance(params, dict)
    salt = base64.b64decode(str(slot["salt"]))
    derived = argon2.derive(
        PASSPHRASE.encode(),
        salt,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_kib=params["memory_cost_kib"],
    )
    assert len(argon2._AHEAD) == 1  # the wrong guess is left, unused
    reference = Argon2id(
        salt=salt,
        length=32,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_cost=params["memory_cost_kib"],
    ).derive(PASSPHRASE.encode())
    assert derived == reference


@pytest.mark.parametrize(
    "arguments",
    [
        ["validate"],  # opens no pool
        ["snapshots", "-c", "/nonexistent/inventory.toml"],  # no inventory: no guess
        ["--server", "https://site:8443", "snapshots"],  # runs on a remote site
    ],
)
def test_no_guess_is_made_or_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str]
) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    make_pool(tmp_path, "first")
    monkeypatch.setenv("COSTOR_INVENTORY", str(inventory(tmp_path)))
    verb = "validate" if arguments == ["validate"] else "snapshots"
    early.derive_ahead(verb, arguments)
    assert argon2._AHEAD == {}


def test_a_broken_inventory_is_no_error(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text("[pools.first\nbackend = ")
    early.derive_ahead("snapshots", ["snapshots", "-c", str(path)])
    assert argon2._AHEAD == {}


def test_an_unknown_client_derives_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    make_pool(tmp_path, "first")
    make_pool(tmp_path, "second")
    path = str(inventory(tmp_path))
    early.derive_ahead("backup", ["backup", "nobody", "-c", path])
    early.derive_ahead("ls", ["ls", "nobody:latest", "-c", path])
    assert argon2._AHEAD == {}


def test_the_process_command_freezes_its_heap_at_the_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``costor`` as the process's command (no argv): what is alive at its end is frozen
    out of the interpreter's last collections (cli/main.py _ending); a command run with
    its argv (as here, in tests) leaves the collector alone."""
    import gc

    from costor.cli.main import main

    gc.unfreeze()
    try:
        assert main(["--version"]) == 0
        assert gc.get_freeze_count() == 0
        monkeypatch.setattr("sys.argv", ["costor", "--version"])
        assert main() == 0
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.startswith("costor ")


def test_opening_the_key_slot_takes_the_key_derived_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's opening (crypto.open_key_slot) uses the derivation started ahead, not
    one of its own: deriving twice cost another ~0.17 s and 64 MiB at every start."""
    monkeypatch.setenv("EARLY_PASSPHRASE", PASSPHRASE)
    master = crypto.MasterKey.generate()
    slot_bytes = crypto.make_key_slot(master, PASSPHRASE, "argon2id", "uuid")
    keys = tmp_path / "first" / "keys"
    keys.mkdir(parents=True)
    (keys / "0123456789abcdef").write_bytes(slot_bytes)
    early.derive_ahead(
        "snapshots", ["snapshots", "--pool", "first", "-c", str(inventory(tmp_path))]
    )
    assert len(argon2._AHEAD) == 1
    opened = crypto.open_key_slot(slot_bytes, PASSPHRASE, "uuid")
    assert argon2._AHEAD == {}  # taken by the opening
    assert opened.id_key == master.id_key
