"""argon2id from several threads at once: pools opened by parallel backups and user
passwords checked by a plan. Without the process-wide lock these never returned."""

from __future__ import annotations

import threading

import pytest

from costor.store import crypto
from costor.util.passwords import hash_password, verify_password

# The deadlock needs OpenSSL's threaded argon2 at the product's parameters (4 lanes).
pytestmark = pytest.mark.product_kdf


def test_concurrent_derivations_all_finish() -> None:
    master = crypto.MasterKey.generate()
    slot = crypto.make_key_slot(master, "passphrase", "argon2id", "pool-uuid")
    stored = hash_password("secret")
    results: list[object] = []

    def open_slot() -> None:
        results.append(crypto.open_key_slot(slot, "passphrase", "pool-uuid").id_key)

    def check_password() -> None:
        results.append(verify_password("secret", stored))

    threads = [threading.Thread(target=f) for f in (open_slot, check_password) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "argon2 deadlocked"
    assert results.count(master.id_key) == 3 and results.count(True) == 3
