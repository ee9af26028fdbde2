"""Printing helpers: JSON documents on stdout, human text, errors and progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from costor.errors import CostorError, InventoryInvalid

if TYPE_CHECKING:
    from costor.ops.maintenance.check import CheckReport, Problem


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


def print_check_report(name: str, report: CheckReport, *, damage_word: str = "DAMAGE") -> None:
    """One pool's check (``costor check``, and before and after ``costor pool repair``)."""
    print(
        f"pool {name}: {report.snapshots} snapshot(s), {report.packs} pack(s), "
        f"{report.trees_checked} tree(s) checked"
        + (
            f", {report.packs_read} pack(s) read ({human_bytes(report.bytes_read)})"
            if report.packs_read
            else ""
        )
    )
    if report.unindexed_packs:
        print(
            f"  {len(report.unindexed_packs)} pack(s) not in the index (left by an "
            "interrupted backup; the next backup reuses them, prune removes them)"
        )
    for problem in report.healed:
        print(f"  healed {problem.kind} {problem.object}: {problem.message}")
    if report.damage_recorded:
        count = report.damage_recorded
        print(
            f"  {count} damaged blob {'copy' if count == 1 else 'copies'} recorded: the next "
            "backups store their content again where their sources still hold it "
            "(docs/repair.md)"
        )
    if report.damage_cleared:
        count = report.damage_cleared
        print(
            f"  {count} blob {'copy' if count == 1 else 'copies'} recorded as damaged "
            "earlier read back sound now (put back since): no longer recorded"
        )
    print_problems(report.problems, damage_word)
    print("  no errors were found" if report.ok else f"  {len(report.problems)} problem(s) found")


def print_problems(problems: list[Problem], word: str) -> None:
    """Each problem a check found, with the snapshots and paths it affects."""
    for problem in problems:
        print(f"  {word} {problem.kind} {problem.object}: {problem.message}")
        for item in problem.affected:
            print(
                "    affects "
                + terminal_text(
                    f"{item['client']} snapshot {item['snapshot'][:12]}: {item['path']}"
                )
            )
        if problem.affected_count > len(problem.affected):
            print(f"    … and {problem.affected_count - len(problem.affected)} more")
