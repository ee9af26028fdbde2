"""Password hashes for users of the web UI and API: argon2id in PHC string form.

``cryptography`` provides argon2id with PHC encoding (no extra package). Parameters are
OWASP's minimum recommendation for argon2id (19 MiB, 2 passes, 1 lane: Password Storage
Cheat Sheet): a login or a `costor plan` checking a user's password costs ~20-40 ms on
this project's 2-core test machine, instead of the ~0.2 s of the 64 MiB pool KDF. The
hash carries its parameters, so raising them later keeps old hashes verifiable.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from costor.util.argon2 import LOCK  # concurrent argon2 calls deadlock: one at a time

MEMORY_KIB = 19 * 1024
ITERATIONS = 2
LANES = 1


def hash_password(password: str) -> str:
    kdf = Argon2id(
        salt=os.urandom(16),
        length=32,
        iterations=ITERATIONS,
        lanes=LANES,
        memory_cost=MEMORY_KIB,
    )
    with LOCK:
        return kdf.derive_phc_encoded(password.encode("utf-8"))


def verify_password(password: str, encoded: str) -> bool:
    try:
        with LOCK:
            Argon2id.verify_phc_encoded(password.encode("utf-8"), encoded)
    except (InvalidKey, ValueError):
        return False
    return True
