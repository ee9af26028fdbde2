"""Keys, key slots, AEAD sealing and blob ids.

* The **master key** is random: 32 bytes for the AEAD cipher, 32 bytes for the keyed
  BLAKE3 blob ids, and a 64-bit seed for the FastCDC gear table (a secret chunker hides
  chunk boundaries, and so file sizes, from whoever holds the storage).
* **Key slots** (``keys/<slot>``) each hold the master key wrapped with a key derived from
  one passphrase (argon2id or scrypt, both from ``cryptography``). Several slots may
  exist; changing a passphrase rewrites one slot, never the data.
* **Sealing**: AES-256-GCM (default) or ChaCha20-Poly1305 with a random 96-bit nonce
  prepended; associated data binds each blob's id and type, so a blob cannot be swapped
  for another. With ``none`` the bytes are stored as they are; integrity then rests on
  the blob id check every read does anyway.

Random 96-bit nonces under one key are safe for about 2^32 messages (NIST SP 800-38D);
at ~1 MiB per blob that is ~4 PiB per pool, far beyond one pool's life.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from costor.errors import KeySlotDamaged, KeySlotUnsafe, PoolError, WrongPassphrase
from costor.util import argon2, hashthreads

NONCE_SIZE = 12
TAG_SIZE = 16
CIPHERS = ("aes-256-gcm", "chacha20-poly1305", "none")
KDFS = ("argon2id", "scrypt")

# argon2id: RFC 9106's second recommended option (64 MiB, t=3, p=4); ~0.2 s here.
ARGON2_PARAMS = {"iterations": 3, "lanes": 4, "memory_cost_kib": 65536}
# scrypt: the parameters restic uses (N=2^15… restic uses 2^15 to 2^16, r=8, p=1).
SCRYPT_PARAMS = {"n": 1 << 15, "r": 8, "p": 1}

# Caps on the KDF parameters a key slot read from the pool may ask for, checked before
# any derivation: whoever can write the storage can plant a slot, and a slot asking for
# 16 GiB of memory or a billion passes must not take the server down. Far above what
# CoStor writes (64 MiB, t=3, p=4; scrypt 32 MiB), so slots tuned up by hand still open.
KDF_MEMORY_CAP = 1 << 30  # bytes, argon2id and scrypt alike
ARGON2_ITERATIONS_CAP = 64
ARGON2_LANES_CAP = 16
SCRYPT_N_CAP = 1 << 20
SCRYPT_R_CAP = 32
SCRYPT_P_CAP = 16


class AuthenticationFailed(Exception):
    """An AEAD tag did not verify: wrong key or damaged bytes."""


@dataclass(frozen=True)
class MasterKey:
    """The pool's keys. ``params_bound`` (stored inside the wrapped, authenticated
    plaintext of a key slot): the pool's identity file carries a parameter tag, so an
    identity without one is a rollback, not an old pool (costor/store/pool_params.py).
    ``with_passphrase`` is not stored: whether the slot that gave this key was opened
    with a non-empty passphrase (an unencrypted pool's slot opens with the empty one)."""

    encryption_key: bytes
    id_key: bytes
    chunker_seed: int
    params_bound: bool = False
    with_passphrase: bool = field(default=False, compare=False)

    @classmethod
    def generate(cls) -> MasterKey:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
        return cls(os.urandom(32), os.urandom(32), seed, params_bound=True)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "encryption_key": _b64(self.encryption_key),
            "id_key": _b64(self.id_key),
            "chunker_seed": self.chunker_seed,
        }
        if self.params_bound:
            doc["params_bound"] = True
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MasterKey:
        raw = json.loads(data)
        return cls(
            _unb64(raw["encryption_key"]),
            _unb64(raw["id_key"]),
            int(raw["chunker_seed"]),
            params_bound=raw.get("params_bound") is True,
        )

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for one purpose, from the id key (HKDF-SHA256): a key given out
        (to a backed-up host, say) reveals nothing of the keys that protect the pool."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
            self.id_key
        )


class Sealer:
    """Seals and opens byte strings with the pool's cipher. Thread-safe (the AEAD
    objects of ``cryptography`` are stateless and release the GIL)."""

    def __init__(self, cipher: str, key: bytes) -> None:
        if cipher not in CIPHERS:
            raise PoolError(message=f"unknown cipher {cipher!r}")
        self.cipher = cipher
        self._aead: AESGCM | ChaCha20Poly1305 | None
        if cipher == "aes-256-gcm":
            self._aead = AESGCM(key)
        elif cipher == "chacha20-poly1305":
            self._aead = ChaCha20Poly1305(key)
        else:
            self._aead = None

    @property
    def overhead(self) -> int:
        return 0 if self._aead is None else NONCE_SIZE + TAG_SIZE

    def seal(self, plaintext: bytes | memoryview, associated: bytes) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes | memoryview, associated: bytes) -> bytes:
        if self._aead is None:
            return bytes(sealed)
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise AuthenticationFailed("sealed data too short")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], associated)
        except InvalidTag as error:
            raise AuthenticationFailed("authentication tag mismatch") from error


def blob_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """Keyed BLAKE3-256 of a blob's plaintext: the blob's identity. Keyed, so ids reveal
    nothing about content to someone without the key. (The blake3 binding releases the
    GIL on large inputs.)"""
    return blake3.blake3(data, key=id_key).digest()


def object_hash(data: bytes | bytearray | memoryview) -> str:
    """Unkeyed BLAKE3-256 of stored bytes, hex: names packs, index segments and snapshots
    so anyone holding a copy can verify it without the key. Threaded where that is safe
    (costor/util/hashthreads.py)."""
    return blake3.blake3(data, max_threads=hashthreads.max_threads()).hexdigest()


# --- key slots -----------------------------------------------------------------------


def kdf_over_cap(kdf: str, params: Any) -> tuple[str, str] | None:
    """What a slot's KDF parameters ask for beyond the caps, as (what, cap), or None.
    Parameters that are not positive integers raise ValueError (an unparseable slot)."""
    names = {"argon2id": ("iterations", "lanes", "memory_cost_kib"), "scrypt": ("n", "r", "p")}
    if kdf not in names:
        return None  # an unknown KDF is refused by _derive without deriving anything
    if not isinstance(params, dict) or not all(
        type(params.get(name)) is int and params[name] > 0 for name in names[kdf]
    ):
        raise ValueError("key slot KDF parameters are not positive integers")
    if kdf == "argon2id":
        limits = {
            "memory (bytes)": (params["memory_cost_kib"] * 1024, KDF_MEMORY_CAP),
            "iterations": (params["iterations"], ARGON2_ITERATIONS_CAP),
            "lanes": (params["lanes"], ARGON2_LANES_CAP),
        }
    else:
        limits = {
            "memory (bytes)": (128 * params["n"] * params["r"], KDF_MEMORY_CAP),
            "n": (params["n"], SCRYPT_N_CAP),
            "r": (params["r"], SCRYPT_R_CAP),
            "p": (params["p"], SCRYPT_P_CAP),
        }
    for name, (value, cap) in limits.items():
        if value > cap:
            return (f"{kdf} {name} {value}", str(cap))
    return None


def _derive(passphrase: str, kdf: str, salt: bytes, params: dict[str, int]) -> bytes:
    secret = passphrase.encode()
    if kdf_over_cap(kdf, params) is not None:
        raise PoolError(message="key slot KDF parameters over the cap")  # checked before
    if kdf == "argon2id":
        # Under one lock (concurrent derivations deadlock), and the result of a
        # derivation the CLI started ahead for these inputs when there is one
        # (costor/cli/early.py): deriving again cost ~0.17 s and another 64 MiB.
        return argon2.derive(
            secret,
            salt,
            iterations=params["iterations"],
            lanes=params["lanes"],
            memory_kib=params["memory_cost_kib"],
        )
    if kdf == "scrypt":
        return Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"]).derive(
            secret
        )
    raise PoolError(message=f"unknown key derivation function {kdf!r}")


LABEL_MAX = 200  # characters of a key slot's label


def make_key_slot(
    master: MasterKey,
    passphrase: str,
    kdf: str,
    pool_uuid: str,
    label: str = "",
    created: str | None = None,
) -> bytes:
    """A key slot file: the master key wrapped by a passphrase-derived key. The pool UUID
    is associated data, so a slot cannot be moved to another pool. ``label`` is a plain,
    unauthenticated note for people (who holds the passphrase): never a secret.
    ``created``: kept when a slot is rewritten (default: now)."""
    if kdf not in KDFS:
        raise PoolError(message=f"unknown key derivation function {kdf!r}")
    check_label(label)
    params = dict(ARGON2_PARAMS if kdf == "argon2id" else SCRYPT_PARAMS)
    salt = os.urandom(16)
    wrapping_key = _derive(passphrase, kdf, salt, params)
    nonce = os.urandom(NONCE_SIZE)
    wrapped = nonce + AESGCM(wrapping_key).encrypt(nonce, master.to_json(), pool_uuid.encode())
    slot = {
        "version": 1,
        "kdf": kdf,
        "params": params,
        "salt": _b64(salt),
        "wrap": "aes-256-gcm",
        "wrapped_master_key": _b64(wrapped),
        "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "label": label,
    }
    return json.dumps(slot, indent=2).encode()


def check_label(label: str) -> None:
    if len(label) > LABEL_MAX or any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise PoolError(
            message=f"a key slot label is at most {LABEL_MAX} characters, without control "
            "characters"
        )


@dataclass(frozen=True)
class KeySlotInfo:
    """What a key slot says of itself in plain text (no passphrase needed). Slots
    written before labels existed have none (""); ``created`` is None when absent."""

    id: str  # the 32 hex digits of keys/<id>
    created: str | None
    kdf: str  # "?" when the slot cannot be parsed
    label: str
    readable: bool

    @classmethod
    def parse(cls, name: str, slot_bytes: bytes) -> KeySlotInfo:
        slot_id = name.rsplit("/", 1)[-1]
        try:
            slot = json.loads(slot_bytes)
            if not isinstance(slot, dict):
                raise ValueError("not a JSON object")
            created = slot.get("created")
            label = slot.get("label")
            return cls(
                id=slot_id,
                created=created if isinstance(created, str) and created else None,
                kdf=str(slot["kdf"]),
                label=label if isinstance(label, str) else "",
                readable=True,
            )
        except (ValueError, KeyError, TypeError):
            return cls(id=slot_id, created=None, kdf="?", label="", readable=False)


class SlotOverCap(Exception):
    """A key slot's KDF parameters are over the caps: it was not tried."""

    def __init__(self, what: str, cap: str) -> None:
        super().__init__(f"{what} (cap {cap})")
        self.what, self.cap = what, cap


def open_key_slot(slot_bytes: bytes, passphrase: str, pool_uuid: str) -> MasterKey:
    """Unwrap one slot; raises :class:`AuthenticationFailed` for a wrong passphrase and
    :class:`SlotOverCap` (before deriving anything) for KDF parameters over the caps."""
    slot: dict[str, Any] = json.loads(slot_bytes)
    over = kdf_over_cap(slot["kdf"], slot["params"])
    if over is not None:
        raise SlotOverCap(*over)
    wrapping_key = _derive(passphrase, slot["kdf"], _unb64(slot["salt"]), slot["params"])
    wrapped = _unb64(slot["wrapped_master_key"])
    try:
        plain = AESGCM(wrapping_key).decrypt(
            wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], pool_uuid.encode()
        )
    except InvalidTag as error:
        raise AuthenticationFailed("wrong passphrase") from error
    return replace(MasterKey.from_json(plain), with_passphrase=bool(passphrase))


def rewrap_key_slot(slot_bytes: bytes, master: MasterKey, passphrase: str, pool_uuid: str) -> bytes:
    """The same slot (KDF, label, creation time) wrapping ``master`` anew: how a pool
    upgrade marks the key of an existing slot as bound to the parameter tag."""
    slot: dict[str, Any] = json.loads(slot_bytes)
    label = slot.get("label")
    created = slot.get("created")
    return make_key_slot(
        master,
        passphrase,
        slot["kdf"] if slot.get("kdf") in KDFS else "argon2id",
        pool_uuid,
        label if isinstance(label, str) else "",
        created if isinstance(created, str) and created else None,
    )


def slot_opens(slot_bytes: bytes, passphrase: str, pool_uuid: str) -> bool:
    """Whether ``passphrase`` opens this slot (an unreadable slot opens with none)."""
    try:
        open_key_slot(slot_bytes, passphrase, pool_uuid)
    except (AuthenticationFailed, SlotOverCap, ValueError, KeyError, TypeError, PoolError):
        return False
    return True


def unlock(
    slots: list[tuple[str, bytes]], passphrase: str, pool_uuid: str, location: str
) -> MasterKey:
    """Try each key slot in turn; the first that opens gives the master key. A slot that
    cannot be parsed (damaged, or not a slot) is passed over: it must not lock out the
    passphrases of the others. So is a slot whose KDF parameters are over the caps (no
    derivation runs for it); if no other slot opens, that is reported as damage
    (:class:`KeySlotUnsafe`), not as a wrong passphrase."""
    over_cap: tuple[str, SlotOverCap] | None = None
    unreadable: tuple[str, Exception] | None = None
    for name, slot_bytes in slots:
        try:
            return open_key_slot(slot_bytes, passphrase, pool_uuid)
        except SlotOverCap as error:
            over_cap = over_cap or (name, error)
        except AuthenticationFailed:
            continue
        except (ValueError, KeyError, TypeError, PoolError) as error:
            unreadable = unreadable or (name, error)
    if over_cap is not None:
        slot_name, over = over_cap
        raise KeySlotUnsafe(
            location=location, slot=slot_name.rsplit("/", 1)[-1], what=over.what, cap=over.cap
        )
    if unreadable is not None:  # damage, not (only) a wrong passphrase
        slot_name, problem = unreadable
        reason = f"{type(problem).__name__}: {problem}"[:100]
        raise KeySlotDamaged(location=location, slot=slot_name.rsplit("/", 1)[-1], reason=reason)
    raise WrongPassphrase(location=location)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
