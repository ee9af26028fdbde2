"""``costor fmt [--check] [FILE…]``: rewrite inventory and profile files in the one
canonical layout (``docs/plan-apply.md``), comments kept.

Without FILE: the inventory (``-c``) and every profile file in its ``profile_paths``.
``--check`` changes nothing and exits 1 naming each file that is not formatted. A file
that is not valid TOML is reported as ``file:line:col`` and left alone (exit 1). The
inventory's *meaning* is not checked here (that is ``costor validate``), so a file with
an unknown key can still be formatted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from costor.cli.common import add_inventory_option


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "fmt", help="rewrite inventory and profile files in the canonical layout"
    )
    add_inventory_option(parser)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 and name unformatted files"
    )
    parser.add_argument("files", metavar="FILE", nargs="*", help="default: inventory + profiles")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.config.fmt import format_toml
    from costor.config.loader import decode_error_position

    files = [Path(f) for f in args.files] or _default_files(Path(args.inventory))
    unformatted: list[Path] = []
    failed = False
    for file in files:
        try:
            text = file.read_text(encoding="utf-8-sig")
        except OSError as error:
            print(f"{file}:1:1: cannot read: {error.strerror}", file=sys.stderr)
            failed = True
            continue
        try:
            formatted = format_toml(text)
        except tomllib.TOMLDecodeError as error:
            line, column, message = decode_error_position(error, text)
            print(f"{file}:{line}:{column}: invalid TOML: {message}", file=sys.stderr)
            failed = True
            continue
        if formatted == text:
            continue
        unformatted.append(file)
        if not args.check:
            _write(file, formatted)
        print(file)
    if args.check and unformatted:
        print(
            f"costor: {len(unformatted)} file(s) not formatted; run `costor fmt`",
            file=sys.stderr,
        )
    return 1 if failed or (args.check and unformatted) else 0


def _default_files(inventory: Path) -> list[Path]:
    """The inventory and the profile files its (raw) ``[costor] profile_paths`` name."""
    from costor.config.profiles import find_profile_files

    files = [inventory]
    try:
        data = tomllib.loads(inventory.read_text(encoding="utf-8-sig"))
    except (OSError, tomllib.TOMLDecodeError):
        return files  # reported when the inventory itself is read
    settings = data.get("costor")
    paths = (
        settings.get("profile_paths", ["profiles"]) if isinstance(settings, dict) else ["profiles"]
    )
    if not isinstance(paths, list):
        return files
    base = inventory.parent
    directories = [base / p for p in paths if isinstance(p, str)]
    return files + [file for _name, file in find_profile_files(directories)]


def _write(file: Path, text: str) -> None:
    """Replace the file whole (temporary + rename), keeping its mode."""
    temporary = file.with_name(f".{file.name}.fmt-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.chmod(temporary, file.stat().st_mode & 0o7777)
    os.replace(temporary, file)
