"""What can be read of a pool without its key: the identity file (``costor-pool.json``:
format version, UUID, cipher, chunker and pack parameters; reading it is the
connectivity check) and the key slots (``keys/``), each wrapping the master key for one
passphrase. :class:`costor.store.pool.Pool` opens a pool with them.

From format version 2 the identity file carries ``params_tag``, an HMAC of everything
else in it under a key derived from the master key: it is read here, and checked once
the key is known (costor/store/pool_params.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from costor.errors import (
    KeySlotNotFound,
    LastKeySlot,
    ObjectNotFound,
    PoolError,
    PoolFormatUnsupported,
    PoolNotFound,
)
from costor.store.backends.base import Backend

IDENTITY_NAME = "costor-pool.json"
KEYS_PREFIX = "keys/"
# 1: no parameter tag (read, with a warning, until `costor pool upgrade`); 2: tagged.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
ID_HASH = "blake3-keyed-256"
OBJECT_HASH = "blake3-256"

# FastCDC 2020 as in pyfastcdc: the real average is avg_size + min_size (cut-point
# skipping, FastCDC paper §3.4), so 512 KiB + 512 KiB gives the ~1 MiB average that
# restic uses, with restic's 512 KiB minimum and an 8 MiB maximum.
DEFAULT_CHUNKER = {
    "algorithm": "fastcdc-2020",
    "avg_size": 512 * 1024,
    "min_size": 512 * 1024,
    "max_size": 8 * 1024 * 1024,
    "normalization": 1,
}
DEFAULT_PACK_SIZE = 32 * 1024 * 1024


@dataclass(frozen=True)
class PoolIdentity:
    uuid: str
    version: int
    encryption: str
    compression: dict[str, Any]
    chunker: dict[str, Any]
    pack_size: int
    created: str
    params_tag: str | None = None  # hex HMAC-SHA256 (pool_params.py); None before v2

    @classmethod
    def from_bytes(cls, data: bytes, location: str) -> PoolIdentity:
        try:
            doc = json.loads(data)
            if doc.get("format") != "costor-pool":
                raise ValueError("not a costor pool identity")
            version = int(doc["version"])
            if version not in SUPPORTED_VERSIONS:
                raise PoolFormatUnsupported(
                    location=location, version=version, supported=SUPPORTED_VERSIONS
                )
            _check_fields(doc)
            return cls(
                uuid=doc["uuid"],
                version=version,
                encryption=doc["encryption"],
                compression=doc["compression"],
                chunker=doc["chunker"],
                pack_size=doc["pack_size"],
                created=doc.get("created", ""),
                params_tag=doc.get("params_tag"),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise PoolError(
                message=f"identity file at {location} is unreadable: {error}"
            ) from error

    def _doc(self) -> dict[str, Any]:
        return {
            "format": "costor-pool",
            "version": self.version,
            "uuid": self.uuid,
            "created": self.created,
            "encryption": self.encryption,
            "id_hash": ID_HASH,
            "object_hash": OBJECT_HASH,
            "compression": self.compression,
            "chunker": self.chunker,
            "pack_size": self.pack_size,
        }

    def authenticated_bytes(self) -> bytes:
        """What the parameter tag covers: every field but the tag, as canonical JSON
        (sorted keys, no whitespace, ASCII)."""
        return json.dumps(self._doc(), sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        doc = self._doc()
        if self.params_tag is not None:
            doc["params_tag"] = self.params_tag
        return (json.dumps(doc, indent=2) + "\n").encode()


def _check_fields(doc: dict[str, Any]) -> None:
    """The identity's fields have the types readers rely on (ValueError if not)."""
    if doc.get("id_hash", ID_HASH) != ID_HASH or doc.get("object_hash", OBJECT_HASH) != (
        OBJECT_HASH
    ):
        raise ValueError("unknown id_hash or object_hash")
    strings = ("uuid", "encryption", "created", "params_tag")
    if not all(isinstance(doc.get(k, ""), str) for k in strings):
        raise ValueError(f"{', '.join(strings)} must be strings")
    if not isinstance(doc["compression"], dict) or not isinstance(doc["chunker"], dict):
        raise ValueError("compression and chunker must be objects")
    sizes = [doc["pack_size"]] + [
        doc["chunker"].get(k) for k in ("avg_size", "min_size", "max_size")
    ]
    if not all(type(size) is int and size > 0 for size in sizes):
        raise ValueError("pack_size and the chunker's sizes must be positive integers")


def count_snapshots(backend: Backend) -> int:
    """How many snapshot manifests the pool holds, counted without the key (listing)."""
    return sum(1 for _info in backend.list("snapshots/"))


def foreign_object(backend: Backend) -> str | None:
    """The name of an object that no CoStor pool init leaves behind, or None.

    With no identity file, a location holding only key slots is an init killed half-way
    (the identity file is written last): it may be initialised again. Anything else is
    someone else's data.
    """
    return next(
        (
            i.name
            for i in backend.list("")
            if not i.name.startswith("keys/") and i.name != IDENTITY_NAME
        ),
        None,
    )


def chunk_avg_kib(identity: PoolIdentity) -> int:
    """The average chunk size an inventory's ``chunk_avg_kib`` names, for this pool."""
    return int(identity.chunker["avg_size"]) * 2 // 1024


DEFAULT_CHUNK_AVG_KIB = int(DEFAULT_CHUNKER["avg_size"]) * 2 // 1024  # type: ignore[call-overload]


def read_key_slots(backend: Backend) -> list[tuple[str, bytes]]:
    """Every key slot (object name, bytes), in listing order."""
    return [(info.name, backend.get(info.name)) for info in backend.list(KEYS_PREFIX)]


def remove_key_slot(backend: Backend, name: str) -> int:
    """Delete one key slot (one object: atomic on every backend); returns how many slots
    remain. The last slot is never removed: without one nothing opens the pool."""
    names = [info.name for info in backend.list(KEYS_PREFIX)]
    if name not in names:
        raise KeySlotNotFound(slot=name.removeprefix(KEYS_PREFIX), location=backend.location)
    if len(names) == 1:
        raise LastKeySlot(slot=name.removeprefix(KEYS_PREFIX), location=backend.location)
    backend.delete(name)
    return len(names) - 1


def read_identity(backend: Backend) -> PoolIdentity:
    """Read the identity file: the cheapest proof that the pool is there and ours."""
    try:
        data = backend.get(IDENTITY_NAME)
    except ObjectNotFound as error:
        raise PoolNotFound(location=backend.location) from error
    return PoolIdentity.from_bytes(data, backend.location)
