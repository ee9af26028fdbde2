"""Blobs and packs (pool format version 1; see docs/format.md).

A **blob** is stored as ``seal(header ‖ payload)`` where header is one byte: 0 = raw,
1 = zstd. The associated data is ``b"costor-blob" ‖ type ‖ blob_id``.

A **pack** is the concatenation of sealed blobs followed by a sealed trailer and a fixed
8-byte footer::

    blob₀ ‖ blob₁ ‖ … ‖ seal(trailer) ‖ u32le(len(seal(trailer))) ‖ b"CSP1"

The trailer lists, per blob, ``id (32) ‖ type (1) ‖ offset (u32) ‖ length (u32) ‖
raw_length (u32)`` — enough to rebuild the index from the packs alone. Packs hold only
data blobs or only tree blobs. A pack's name is the BLAKE3 hash of all its bytes.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from enum import IntEnum

import zstandard

from costor.store.crypto import AuthenticationFailed, Sealer, blob_id

FOOTER_MAGIC = b"CSP1"
FOOTER = struct.Struct("<I4s")
ENTRY = struct.Struct("<32sBIII")
TRAILER_AD = b"costor-pack-trailer"

HEADER_RAW = 0
HEADER_ZSTD = 1
_HEADERS = {HEADER_RAW: b"\x00", HEADER_ZSTD: b"\x01"}


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: bytes
    type: BlobType
    offset: int
    length: int
    raw_length: int


class BlobCorrupt(Exception):
    """A blob failed authentication, decompression or its id check."""


def blob_ad(blob_type: int, blob_identity: bytes) -> bytes:
    return b"costor-blob" + bytes([blob_type]) + blob_identity


class BlobCodec:
    """Compresses+seals and opens+verifies blobs. Thread-safe: zstd contexts are kept
    per thread because ``zstandard`` compressors are not safe to share; both zstd and
    the AEAD release the GIL, so several threads really run in parallel."""

    def __init__(self, sealer: Sealer, id_key: bytes, compression_level: int | None) -> None:
        self.sealer = sealer
        self.id_key = id_key
        self.compression_level = compression_level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.compression_level or 3)
            self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blob_id(self.id_key, data)

    def seal(
        self,
        blob_type: int,
        blob_identity: bytes,
        data: bytes | memoryview,
        *,
        compress: bool = True,
    ) -> bytes:
        """Compress (unless told not to, or it does not shrink the data) and seal."""
        payload: bytes | memoryview = data
        header = HEADER_RAW
        if compress and self.compression_level is not None and len(data) > 64:
            compressed = self._compressor().compress(data)
            if len(compressed) < len(data):
                payload, header = compressed, HEADER_ZSTD
        plaintext = b"".join((_HEADERS[header], payload))  # one copy, not two
        return self.sealer.seal(plaintext, blob_ad(blob_type, blob_identity))

    def open(self, blob_type: int, blob_identity: bytes, sealed: bytes, raw_length: int) -> bytes:
        try:
            plaintext = self.sealer.open(sealed, blob_ad(blob_type, blob_identity))
        except AuthenticationFailed as error:
            raise BlobCorrupt(f"blob {blob_identity.hex()[:16]}: {error}") from error
        if not plaintext:
            raise BlobCorrupt(f"blob {blob_identity.hex()[:16]}: empty")
        header, payload = plaintext[0], memoryview(plaintext)[1:]
        if header == HEADER_ZSTD:
            try:
                data = self._decompressor().decompress(payload, max_output_size=raw_length)
            except zstandard.ZstdError as error:
                raise BlobCorrupt(f"blob {blob_identity.hex()[:16]}: {error}") from error
        elif header == HEADER_RAW:
            data = bytes(payload)
        else:
            raise BlobCorrupt(f"blob {blob_identity.hex()[:16]}: unknown header {header}")
        if len(data) != raw_length or self.blob_id(data) != blob_identity:
            raise BlobCorrupt(f"blob {blob_identity.hex()[:16]}: content does not match its id")
        return data


class PackBuilder:
    """Collects sealed blobs of one type until the pack is big enough. Not
    thread-safe: the pool serialises ``add``; ``finish`` runs after the builder was
    taken out of service, outside the pool's lock. Blobs are appended to one buffer
    (a large ``bytearray`` grows by ``mremap``, not by copying), so the pack is never
    held twice: a list of pieces joined at the end held 2 x 32 MiB at a first backup's
    peak."""

    def __init__(self, blob_type: BlobType) -> None:
        self.blob_type = blob_type
        self.buffer = bytearray()
        self.size = 0
        self.entries: list[PackEntry] = []

    def add(self, blob_identity: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(
            PackEntry(blob_identity, self.blob_type, self.size, len(sealed), raw_length)
        )
        self.buffer += sealed
        self.size += len(sealed)

    def finish(self, sealer: Sealer) -> bytearray:
        """Close the pack and return its bytes (the builder's buffer: use it once)."""
        trailer = b"".join(
            ENTRY.pack(e.blob_id, e.type, e.offset, e.length, e.raw_length) for e in self.entries
        )
        sealed_trailer = sealer.seal(trailer, TRAILER_AD)
        data, self.buffer = self.buffer, bytearray()
        data += sealed_trailer
        data += FOOTER.pack(len(sealed_trailer), FOOTER_MAGIC)
        return data


def parse_footer(footer: bytes) -> int:
    """Length of the sealed trailer, from the pack's last 8 bytes."""
    if len(footer) != FOOTER.size:
        raise BlobCorrupt("pack too short for a footer")
    length, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC:
        raise BlobCorrupt("pack footer magic mismatch")
    return int(length)


def parse_trailer(sealer: Sealer, sealed_trailer: bytes, pack_size: int) -> list[PackEntry]:
    try:
        trailer = sealer.open(sealed_trailer, TRAILER_AD)
    except AuthenticationFailed as error:
        raise BlobCorrupt(f"pack trailer: {error}") from error
    if len(trailer) % ENTRY.size:
        raise BlobCorrupt("pack trailer has a partial entry")
    entries = []
    limit = pack_size - FOOTER.size - len(sealed_trailer)
    for blob_identity, blob_type, offset, length, raw_length in ENTRY.iter_unpack(trailer):
        if offset + length > limit or blob_type not in (0, 1):
            raise BlobCorrupt("pack trailer entry out of range")
        entries.append(PackEntry(blob_identity, BlobType(blob_type), offset, length, raw_length))
    return entries


def read_entries(sealer: Sealer, pack: bytes) -> list[PackEntry]:
    """Entries of a whole pack held in memory."""
    trailer_length = parse_footer(pack[-FOOTER.size :])
    start = len(pack) - FOOTER.size - trailer_length
    if start < 0:
        raise BlobCorrupt("pack trailer length out of range")
    return parse_trailer(sealer, pack[start : len(pack) - FOOTER.size], len(pack))


def pack_name(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id[2:4]}/{pack_id}"
