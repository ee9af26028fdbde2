"""The pool's parameters bound to its key (issue 19, item 3) and capped key-slot KDF
parameters (item 9): the identity file's tag, old pools and their upgrade, planted key
slots."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import PASSPHRASE, make_pool

from costor.errors import (
    KeySlotUnsafe,
    PoolError,
    PoolMismatch,
    PoolParametersTampered,
    WrongPassphrase,
)
from costor.store import crypto, pool_params
from costor.store.backends import LocalBackend
from costor.store.pool import IDENTITY_NAME, Pool, PoolIdentity, read_key_slots


def _identity(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((path / IDENTITY_NAME).read_text())
    return doc


def _write_identity(path: Path, doc: dict[str, Any]) -> None:
    (path / IDENTITY_NAME).write_text(json.dumps(doc, indent=2))


def make_old_pool(path: Path, **kwargs: Any) -> Pool:
    """A pool as CoStor wrote them before the tag: identity version 1 without
    ``params_tag``, key slots whose master key does not say ``params_bound``."""
    pool = make_pool(path, **kwargs)
    backend = LocalBackend(path)
    old_master = replace(pool.master, params_bound=False)
    passphrase = kwargs.get("passphrase", PASSPHRASE) or ""
    for name, _slot in read_key_slots(backend):
        backend.put(name, crypto.make_key_slot(old_master, passphrase, "argon2id", pool.uuid))
    doc = _identity(path)
    doc["version"] = 1
    del doc["params_tag"]
    _write_identity(path, doc)
    return pool


TAMPERINGS: dict[str, Any] = {
    "encryption none": lambda d: d.update(encryption="none"),
    "other cipher": lambda d: d.update(encryption="chacha20-poly1305"),
    "chunker avg": lambda d: d["chunker"].update(avg_size=4096),
    "chunker min": lambda d: d["chunker"].update(min_size=64),
    "chunker normalization": lambda d: d["chunker"].update(normalization=3),
    "compression off": lambda d: d.update(compression={"algorithm": "none"}),
    "compression level": lambda d: d["compression"].update(level=22),
    "pack size 1": lambda d: d.update(pack_size=1),
    "tag deleted": lambda d: d.pop("params_tag"),
    "tag replaced": lambda d: d.update(params_tag="0" * 64),
    "tag deleted, version 1": lambda d: (d.pop("params_tag"), d.update(version=1)),
    "none, untagged, version 1": lambda d: (
        d.pop("params_tag"),
        d.update(version=1, encryption="none"),
    ),
}


def test_a_new_pool_has_a_tag_over_its_parameters(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    doc = _identity(tmp_path / "p")
    assert doc["version"] == 2 and len(doc["params_tag"]) == 64
    assert pool.master.params_bound
    assert pool_params.params_tag(pool.master, pool.identity) == doc["params_tag"]
    reopened = Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE)
    assert reopened.identity == pool.identity and reopened.master.params_bound


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_each_tampering_is_refused_on_open(tmp_path: Path, case: str) -> None:
    make_pool(tmp_path / "p")
    doc = _identity(tmp_path / "p")
    TAMPERINGS[case](doc)
    _write_identity(tmp_path / "p", doc)
    with pytest.raises(PoolParametersTampered) as raised:
        Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE)
    assert raised.value.exit_code == 3
    assert "refusing to open it" in str(raised.value)
    assert "costor-pool.json" in str(raised.value)


def test_an_unencrypted_pool_opens_and_is_tagged_too(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p", encryption="none", passphrase=None)
    assert Pool.open(LocalBackend(tmp_path / "p"), None).master == pool.master
    doc = _identity(tmp_path / "p")
    doc["pack_size"] = 1
    _write_identity(tmp_path / "p", doc)
    with pytest.raises(PoolParametersTampered):  # (anyone could forge it: no passphrase)
        Pool.open(LocalBackend(tmp_path / "p"), None)


def test_another_pools_identity_is_refused(tmp_path: Path) -> None:
    make_pool(tmp_path / "a")
    make_pool(tmp_path / "b")
    a = _identity(tmp_path / "a")
    b = _identity(tmp_path / "b")
    # As it is: its UUID is not this pool's, so no key slot opens.
    _write_identity(tmp_path / "a", b)
    with pytest.raises(WrongPassphrase):
        Pool.open(LocalBackend(tmp_path / "a"), PASSPHRASE)
    with pytest.raises(PoolMismatch):
        Pool.open(LocalBackend(tmp_path / "a"), PASSPHRASE, expected_uuid=a["uuid"])
    # With this pool's UUID written in: the tag was made under another key.
    _write_identity(tmp_path / "a", {**b, "uuid": a["uuid"]})
    with pytest.raises(PoolParametersTampered):
        Pool.open(LocalBackend(tmp_path / "a"), PASSPHRASE)


def test_a_cached_key_does_not_skip_the_check(tmp_path: Path) -> None:
    pool = make_pool(tmp_path / "p")
    doc = _identity(tmp_path / "p")
    doc["pack_size"] = 1
    tampered = PoolIdentity.from_bytes(json.dumps(doc).encode(), "p")
    with pytest.raises(PoolParametersTampered):
        Pool(pool.backend, tampered, pool.master)  # as ops/context.py's cached open does


def test_an_old_pool_opens_with_a_warning_then_upgrades(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_old_pool(tmp_path / "p")
    backend = LocalBackend(tmp_path / "p")
    with caplog.at_level(logging.WARNING, logger="costor"):
        opened = Pool.open(backend, PASSPHRASE)
        assert opened.master == replace(old.master, params_bound=False)
        Pool.open(backend, PASSPHRASE)
    warnings = [r.getMessage() for r in caplog.records if "pool upgrade" in r.getMessage()]
    assert len(warnings) == 1 and "no parameter tag" in warnings[0]  # once per process

    result = pool_params.upgrade(backend, PASSPHRASE, expected_uuid=old.uuid)
    assert (result.from_version, result.to_version, result.tagged) == (1, 2, True)
    assert (result.slots_rebound, result.slots_other) == (1, 0)
    doc = _identity(tmp_path / "p")
    assert doc["version"] == 2 and doc["uuid"] == old.uuid and "params_tag" in doc
    upgraded = Pool.open(backend, PASSPHRASE)
    assert upgraded.master == old.master and upgraded.master.params_bound
    assert upgraded.identity.chunker == old.identity.chunker

    again = pool_params.upgrade(backend, PASSPHRASE)
    assert (again.tagged, again.slots_rebound) == (False, 0)
    # Rolled back to the old format, or changed: refused now.
    for case in ("tag deleted, version 1", "pack size 1"):
        tampered = json.loads(json.dumps(doc))
        TAMPERINGS[case](tampered)
        _write_identity(tmp_path / "p", tampered)
        with pytest.raises(PoolParametersTampered):
            Pool.open(backend, PASSPHRASE)


def test_an_old_encrypted_pool_is_never_opened_as_unencrypted(tmp_path: Path) -> None:
    make_old_pool(tmp_path / "p")
    doc = _identity(tmp_path / "p")
    doc["encryption"] = "none"
    _write_identity(tmp_path / "p", doc)
    backend = LocalBackend(tmp_path / "p")
    with pytest.raises(PoolParametersTampered) as raised:
        Pool.open(backend, PASSPHRASE)
    assert "created encrypted" in str(raised.value)
    with pytest.raises(PoolParametersTampered):
        pool_params.upgrade(backend, PASSPHRASE)  # the upgrade does not bless it
    with pytest.raises(WrongPassphrase):
        Pool.open(backend, None)  # and without the passphrase nothing opens


def test_upgrade_rebinds_only_the_slots_its_passphrase_opens(tmp_path: Path) -> None:
    old = make_old_pool(tmp_path / "p")
    backend = LocalBackend(tmp_path / "p")
    old_master = replace(old.master, params_bound=False)
    backend.put("keys/" + "f" * 32, crypto.make_key_slot(old_master, "other", "scrypt", old.uuid))
    result = pool_params.upgrade(backend, PASSPHRASE)
    assert (result.slots_rebound, result.slots_other) == (1, 1)
    assert not Pool.open(backend, "other").master.params_bound  # until upgraded with it
    assert pool_params.upgrade(backend, "other").slots_rebound == 1
    assert Pool.open(backend, "other").master.params_bound


def _planted_slot(kdf: str, params: dict[str, int]) -> bytes:
    return json.dumps(
        {
            "version": 1,
            "kdf": kdf,
            "params": params,
            "salt": "AAAAAAAAAAAAAAAAAAAAAA==",
            "wrap": "aes-256-gcm",
            "wrapped_master_key": "AAAA",
        }
    ).encode()


OVER_CAP = {
    "argon2 16 GiB": ("argon2id", {"iterations": 3, "lanes": 4, "memory_cost_kib": 16 << 20}),
    "argon2 passes": ("argon2id", {"iterations": 10**9, "lanes": 4, "memory_cost_kib": 65536}),
    "argon2 lanes": ("argon2id", {"iterations": 3, "lanes": 64, "memory_cost_kib": 65536}),
    "scrypt memory": ("scrypt", {"n": 1 << 20, "r": 16, "p": 1}),
    "scrypt n": ("scrypt", {"n": 1 << 24, "r": 1, "p": 1}),
    "scrypt p": ("scrypt", {"n": 1 << 15, "r": 8, "p": 1000}),
}


@pytest.mark.parametrize("case", sorted(OVER_CAP))
def test_a_planted_key_slot_over_the_caps_is_refused_without_deriving(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(tmp_path / "p")
    backend = LocalBackend(tmp_path / "p")
    [(real, real_bytes)] = read_key_slots(backend)
    kdf, params = OVER_CAP[case]
    assert crypto.kdf_over_cap(kdf, params) is not None
    backend.put("keys/" + "0" * 32, _planted_slot(kdf, params))  # sorts first: tried first
    derived: list[str] = []
    real_derive = crypto._derive
    monkeypatch.setattr(
        crypto, "_derive", lambda pw, k, s, p: derived.append(k) or real_derive(pw, k, s, p)
    )
    # The real slot still opens; the planted one is passed over, not derived.
    assert Pool.open(backend, PASSPHRASE).master == pool.master
    assert derived == ["argon2id"]
    # With the real slot gone, the planted one is reported as damage (exit 3), fast.
    backend.delete(real)
    started = time.monotonic()
    with pytest.raises(KeySlotUnsafe) as raised:
        Pool.open(backend, PASSPHRASE)
    assert time.monotonic() - started < 2
    assert raised.value.exit_code == 3 and "0" * 32 in str(raised.value)
    assert derived == ["argon2id"]
    assert real_bytes


@pytest.mark.product_kdf  # the product's parameters, not the suite's cheap ones
def test_the_caps_admit_what_costor_writes() -> None:
    assert crypto.kdf_over_cap("argon2id", crypto.ARGON2_PARAMS) is None
    assert crypto.kdf_over_cap("scrypt", crypto.SCRYPT_PARAMS) is None
    assert (
        crypto.kdf_over_cap("argon2id", {"iterations": 4, "lanes": 16, "memory_cost_kib": 1 << 20})
        is None
    )


@pytest.mark.parametrize(
    "change",
    [
        {"pack_size": "33554432"},
        {"pack_size": 0},
        {"chunker": 5},
        {"compression": None},
        {"encryption": 1},
        {"params_tag": 7},
        {"id_hash": "sha1"},
    ],
)
def test_an_identity_of_the_wrong_shape_is_a_clear_error(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    make_pool(tmp_path / "p")
    _write_identity(tmp_path / "p", {**_identity(tmp_path / "p"), **change})
    with pytest.raises(PoolError) as raised:
        Pool.open(LocalBackend(tmp_path / "p"), PASSPHRASE)
    assert "is unreadable" in str(raised.value)
