"""Which content is not worth compressing, decided before trying.

zstd gives up on incompressible data by itself (a blob is stored raw when compression
does not shrink it), but only after spending the time. Files that are already
compressed or encoded (archives, media, packages) are recognised by their name or their
first bytes and sealed without the attempt. The lists are deliberately conservative:
a format missing here is still stored correctly, just after a wasted zstd pass.
"""

from __future__ import annotations

import os

# Lower-case name suffixes of formats that are compressed by design.
INCOMPRESSIBLE_SUFFIXES = frozenset(
    {
        # archives and compressed streams
        ".gz",
        ".tgz",
        ".bz2",
        ".tbz2",
        ".xz",
        ".txz",
        ".zst",
        ".tzst",
        ".lz4",
        ".lzma",
        ".7z",
        ".rar",
        ".zip",
        ".jar",
        ".war",
        ".apk",
        ".deb",
        ".rpm",
        ".cab",
        ".br",
        # images, audio, video, fonts, office documents (zip containers)
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".webp",
        ".heic",
        ".avif",
        ".jxl",
        ".mp3",
        ".aac",
        ".ogg",
        ".opus",
        ".flac",
        ".m4a",
        ".mp4",
        ".m4v",
        ".mkv",
        ".webm",
        ".avi",
        ".mov",
        ".wmv",
        ".woff",
        ".woff2",
        ".docx",
        ".xlsx",
        ".pptx",
        ".odt",
        ".ods",
        ".odp",
        ".epub",
    }
)

# Magic numbers at offset 0.
INCOMPRESSIBLE_MAGIC = (
    b"\x1f\x8b",  # gzip
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\xfd7zXZ\x00",  # xz
    b"BZh",  # bzip2
    b"PK\x03\x04",  # zip and its containers
    b"7z\xbc\xaf\x27\x1c",  # 7-zip
    b"Rar!\x1a\x07",  # rar
    b"\x89PNG\r\n\x1a\n",  # png
    b"\xff\xd8\xff",  # jpeg
    b"GIF8",  # gif
    b"\x04\x22\x4d\x18",  # lz4 frame
    b"OggS",  # ogg
    b"fLaC",  # flac
    b"wOF2",  # woff2
)


def worth_compressing(name: bytes, head: bytes | memoryview) -> bool:
    """False when the file's name or its first bytes say it is already compressed."""
    suffix = os.path.splitext(name)[1].lower()
    if suffix and suffix.decode("ascii", "ignore") in INCOMPRESSIBLE_SUFFIXES:
        return False
    start = bytes(head[:8])
    return not any(start.startswith(magic) for magic in INCOMPRESSIBLE_MAGIC)
