"""Printing helpers: JSON documents on stdout, human text, errors and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from costor.errors import CostorError, InventoryInvalid


def print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def print_error(error: CostorError) -> None:
    if isinstance(error, InventoryInvalid):
        for diagnostic in error.diagnostics:
            print(str(diagnostic), file=sys.stderr)
    print(f"costor: error: {error}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"costor: warning: {message}", file=sys.stderr)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def terminal_text(text: str | bytes) -> str:
    """A name or path as a terminal may show it: a file name from a backed-up host may
    hold any byte but NUL and ``/``, and a newline or an escape sequence must not reach
    the terminal as itself (a name could rewrite the lines around it). As GNU ``ls -b``:
    backslash, newline, tab and carriage return as ``\\ \\n \\t \\r``, other control
    characters and undecodable bytes as ``\\xHH``; printable text as it is. ``--json``
    output carries names unchanged (JSON escapes them itself)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text  # the common case, in one pass
    shown = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            shown.append(_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            shown.append(char)
        elif code < 0x100:
            shown.append(f"\\x{code:02x}")
        else:
            shown.append(f"\\u{code:04x}")
    return "".join(shown)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
