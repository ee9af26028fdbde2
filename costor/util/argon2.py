"""One argon2id derivation at a time in this process, and derivations started ahead.

Measured here (cryptography 50.0.2, OpenSSL's threaded argon2): two derivations started
at once from two Python threads never return — a deadlock, found when ``backup --all``
opened two pools in parallel. One at a time they take ~0.17 s each (64 MiB, 3 passes,
4 lanes) and a second thread never made them faster anyway (memory-bound; the lanes
already use the cores). minio/madmin-go holds a package-level mutex around argon2 for
the same reason of cost. Every argon2 call in CoStor goes through :data:`LOCK`.

A derivation releases the GIL, so it can run on one core while the other imports
Python modules: a new process that knows early which key slot it will open (the
command line names the pool's client; the inventory file says where the pool is)
calls :func:`derive_ahead` before its heavy imports, and :func:`derive` with the same
inputs later takes that result instead of deriving again (bench/startup.py). Anything
started ahead that is not asked for is only CPU spent: a guess cannot change a result.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

LOCK = threading.Lock()

# (sha256 of the secret, salt, iterations, lanes, memory cost) -> the derivation started
# ahead. Taken (removed) by the first derive() that asks for it.
_AHEAD: dict[tuple[bytes, bytes, int, int, int], Future[bytes]] = {}
_AHEAD_LOCK = threading.Lock()


def _argon2id(secret: bytes, salt: bytes, iterations: int, lanes: int, memory_kib: int) -> bytes:
    with LOCK:
        return Argon2id(
            salt=salt, length=32, iterations=iterations, lanes=lanes, memory_cost=memory_kib
        ).derive(secret)


def _key(
    secret: bytes, salt: bytes, iterations: int, lanes: int, memory_kib: int
) -> tuple[bytes, bytes, int, int, int]:
    return hashlib.sha256(secret).digest(), salt, iterations, lanes, memory_kib


def derive(secret: bytes, salt: bytes, *, iterations: int, lanes: int, memory_kib: int) -> bytes:
    """The 32-byte argon2id key of ``secret`` and ``salt``: the one :func:`derive_ahead`
    started for the same inputs if there is one (waiting for it to end), else derived now
    (under :data:`LOCK`). A derivation ahead that failed is done again here, so its
    error is this call's."""
    with _AHEAD_LOCK:
        ahead = _AHEAD.pop(_key(secret, salt, iterations, lanes, memory_kib), None)
    if ahead is not None:
        try:
            return ahead.result()
        except Exception:  # noqa: BLE001  (derived again below: its error is ours)
            pass
    return _argon2id(secret, salt, iterations, lanes, memory_kib)


def derive_ahead(
    secret: bytes, salt: bytes, *, iterations: int, lanes: int, memory_kib: int
) -> None:
    """Start deriving on a thread of its own (a daemon: a process that ends without
    asking for it does not wait); a later :func:`derive` of the same inputs takes it.
    The same inputs twice start one derivation."""
    key = _key(secret, salt, iterations, lanes, memory_kib)
    ahead: Future[bytes] = Future()
    with _AHEAD_LOCK:
        if key in _AHEAD:
            return
        _AHEAD[key] = ahead

    def run() -> None:
        try:
            ahead.set_result(_argon2id(secret, salt, iterations, lanes, memory_kib))
        except BaseException as error:  # noqa: BLE001  (handed to derive(), which redoes it)
            ahead.set_exception(error)

    threading.Thread(target=run, name="argon2-ahead", daemon=True).start()
