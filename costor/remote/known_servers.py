"""The known-servers file: each site server's TLS certificate as it was the first time,
pinned like an SSH host key in ``~/.ssh/known_hosts``.

One line per server, ``HOST:PORT FINGERPRINT``: the SHA-256 of the certificate (DER) in
colon-separated hex pairs, as ``openssl x509 -noout -fingerprint -sha256 -in CERT``
prints it, so a fingerprint can be compared with the site's administrator by eye.
Blank lines and ``#`` comments are allowed. The file is
``~/.config/costor/known_servers`` unless ``COSTOR_KNOWN_SERVERS`` names another. A
replaced certificate is accepted by deleting its line (the error that refuses it names
the file and the line).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from costor.errors import KnownServersInvalid

ENVIRONMENT = "COSTOR_KNOWN_SERVERS"
DEFAULT = "~/.config/costor/known_servers"
_FINGERPRINT = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")


@dataclass(frozen=True)
class Pin:
    """The fingerprint pinned for a server, and where: the line to delete to replace it."""

    file: Path
    line: int
    fingerprint: str


def default_file() -> Path:
    return Path(os.environ.get(ENVIRONMENT) or os.path.expanduser(DEFAULT))


def fingerprint(certificate_der: bytes) -> str:
    """``AB:CD:…``: the SHA-256 of a certificate in DER, as openssl prints it."""
    digest = hashlib.sha256(certificate_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def lookup(file: Path, server: str) -> Pin | None:
    """The pin of ``server`` (``HOST:PORT``) in ``file``, the first if several; ``None``
    when the file or its line does not exist. A line that does not parse is an error
    (:class:`KnownServersInvalid`): a damaged file must not silently unpin a server."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise KnownServersInvalid(file=file, line=0, reason=f"cannot be read: {error}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or not _FINGERPRINT.match(fields[1]):
            raise KnownServersInvalid(
                file=file,
                line=number,
                reason="expected `HOST:PORT FINGERPRINT` (SHA-256, hex pairs joined by "
                "colons): fix or delete the line",
            )
        if fields[0] == server:
            return Pin(file=file, line=number, fingerprint=fields[1])
    return None


def record(file: Path, server: str, presented: str) -> Pin:
    """Append ``server``'s pin to ``file`` (created, with its directory, readable by its
    owner only); the pin as recorded."""
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a+b") as handle:
        handle.seek(0)
        before = handle.read()
        lines = before.count(b"\n")
        if before and not before.endswith(b"\n"):  # a last line without its end
            handle.write(b"\n")
            lines += 1
        handle.write(f"{server} {presented}\n".encode())
    return Pin(file=file, line=lines + 1, fingerprint=presented)
