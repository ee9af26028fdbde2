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


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
