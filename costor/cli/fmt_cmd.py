"""``costor fmt [--check] [FILE…]``: rewrite inventory and profile files in the one
canonical layout (``docs/plan-apply.md``), comments kept.

Without FILE: the inventory (``-c``) and every profile file in its ``profile_paths``.
``--check`` changes nothing and exits 1 naming each file that is not formatted. A file
that is not valid TOML is reported as ``file:line:col`` and left alone (exit 1). The
inventory's *meaning* is not checked here (that is ``costor validate``), so a file with
an unknown key can still be formatted.

A formatted file is UTF-8 without a byte-order mark, with LF line ends: the bytes are
compared, so a CRLF or BOM file counts as unformatted (as with gofmt), wherever it runs.
A file is replaced whole (temporary + rename) keeping its mode and, where allowed, its
owner; a symlink is followed, the file it points to is rewritten and the link stays.
"""

from __future__ import annotations

import argparse
import codecs
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
    from costor.config.fmt import FormatError, format_toml
    from costor.config.loader import TOO_DEEP, decode_error_position

    files = _unique([Path(f) for f in args.files] or _default_files(Path(args.inventory)))
    unformatted: list[Path] = []
    failed = False
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as error:
            print(f"{file}:1:1: cannot read: {error.strerror}", file=sys.stderr)
            failed = True
            continue
        try:
            text = raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
        except UnicodeDecodeError as error:
            line, column = _byte_position(raw, error.start + len(raw) - len(error.object))
            print(f"{file}:{line}:{column}: not UTF-8: {error.reason}", file=sys.stderr)
            failed = True
            continue
        try:
            formatted = format_toml(text).encode("utf-8")
        except tomllib.TOMLDecodeError as error:
            line, column, message = decode_error_position(error, text)
            print(f"{file}:{line}:{column}: invalid TOML: {message}", file=sys.stderr)
            failed = True
            continue
        except RecursionError:  # tomllib parses nesting recursively
            print(f"{file}:1:1: {TOO_DEEP}", file=sys.stderr)
            failed = True
            continue
        except FormatError as error:
            print(f"{file}:1:1: cannot format (left as it is): {error}", file=sys.stderr)
            failed = True
            continue
        if formatted == raw:
            continue
        unformatted.append(file)
        if not args.check:
            try:
                _write(file, formatted)
            except OSError as error:
                print(f"{file}:1:1: cannot write: {error.strerror}", file=sys.stderr)
                failed = True
                continue
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
    except (OSError, ValueError, RecursionError):  # TOMLDecodeError, UnicodeDecodeError
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


def _unique(files: list[Path]) -> list[Path]:
    """Each file once (a directory listed twice in profile_paths, a FILE given twice)."""
    seen: set[str] = set()
    result = []
    for file in files:
        key = os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            result.append(file)
    return result


def _byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of ``offset`` in ``raw``."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _write(file: Path, content: bytes) -> None:
    """Replace the file whole (temporary + rename), keeping its mode and owner.

    A symlink is followed: ``os.replace`` on the link itself would swap the link for a
    regular file and leave the file it points to unformatted.
    """
    target = Path(os.path.realpath(file))
    status = target.stat()
    temporary = target.with_name(f".{target.name}.fmt-{os.getpid()}")
    try:
        temporary.write_bytes(content)
        if (status.st_uid, status.st_gid) != (os.getuid(), os.getgid()):
            try:
                os.chown(temporary, status.st_uid, status.st_gid)
            except PermissionError:
                pass  # not ours to give away: the file becomes the writer's, as an editor's would
        os.chmod(temporary, status.st_mode & 0o7777)  # after chown, which clears setuid bits
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
