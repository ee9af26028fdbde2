"""``costor fmt``: one canonical layout for inventory and profile files, comments kept.

Why not ``tomli_w.dumps`` of the parsed document alone: it drops every comment (an
inventory is mostly its comments), writes ``passphrase = { env = … }`` as a
``[pools.x.passphrase]`` sub-table and ``[[moved]]`` blocks as one inline array. So the
layout is decided here and every *value* is written by tomli-w. The layout, like
``terraform fmt``'s, has no options:

- top-level keys first, then tables in the order they were written; resource tables
  get a header each (``[pools.main]``), one blank line before every header;
  ``[[moved]]`` / ``[[removed]]`` stay arrays of tables;
- inside a resource, tables are inline (``ssh = { user = "costor", port = 22 }``);
- an array stays on one line if it fits in 100 columns and holds no comment, otherwise
  one element per line, indented by 4, with a trailing comma;
- keys are bare where TOML allows it; ``a.b = 1`` dotted keys become inline tables;
- comments stay with the key, header or array element they were written above, or
  after on the same line, or right below it when a blank line then separates them from
  what follows (commented-out options under a table stay under it); a blank line
  before an item is kept, several become one; trailing comments of consecutive lines
  are aligned, two spaces after the longest line.

The result is checked: it must parse to exactly the same data, or nothing is written.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from costor.config.positions import KeyPath, scan_layout

LINE_LENGTH = 100
INDENT = "    "
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class FormatError(ValueError):
    """The formatted text would not mean the same (a bug here; nothing is written)."""


def format_toml(text: str) -> str:
    """``text`` (valid TOML) in the canonical layout. Raises ``tomllib.TOMLDecodeError``."""
    data = tomllib.loads(text)
    layout = _Layout.read(text)
    writer = _Writer(layout)
    writer.document(data)
    result = writer.text()
    if tomllib.loads(result) != data:
        raise FormatError("the formatted document does not parse to the same data")
    return result


# --- where comments and blank lines were -------------------------------------------------


@dataclass
class _Layout:
    leading: dict[KeyPath, list[str]] = field(default_factory=dict)  # "" marks a blank line
    after: dict[KeyPath, list[str]] = field(default_factory=dict)  # right below the item
    trailing: dict[KeyPath, str] = field(default_factory=dict)
    blank_before: set[KeyPath] = field(default_factory=set)
    tail: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, text: str) -> _Layout:
        positions, comments = scan_layout(text)
        layout = cls()
        # The item each line starts: the leftmost key or element on it (ties: the outer).
        starts: dict[int, tuple[int, int, KeyPath]] = {}
        for path in positions:
            position = positions.get(path)
            assert position is not None
            candidate = (position.column, len(path), path)
            if position.line not in starts or candidate < starts[position.line]:
                starts[position.line] = candidate
        comment_at = {c.position.line: c for c in comments}
        lines = text.splitlines()
        pending: list[str] = []
        last_path: KeyPath | None = None
        for number, line in enumerate(lines, start=1):
            comment = comment_at.get(number)
            code = line[: comment.position.column - 1] if comment else line
            if not code.strip():
                if comment:
                    pending.append(comment.text)
                elif pending or last_path is not None:
                    pending.append("")
                continue
            start = starts.get(number)
            if start is not None:
                path = start[2]
                if last_path is not None and pending and pending[0] != "" and "" in pending:
                    # Comments right below the previous item, then a blank line: theirs.
                    split = pending.index("")
                    layout.after[last_path] = pending[:split]
                    pending = pending[split:]
                if pending and pending[0] == "":
                    layout.blank_before.add(path)
                block = _collapse(pending)
                if block:
                    layout.leading[path] = block
                pending = []
                last_path = path
            if comment and last_path is not None:
                layout.trailing.setdefault(last_path, comment.text)
        if last_path is not None and pending and pending[0] != "":
            split = pending.index("") if "" in pending else len(pending)
            layout.after[last_path] = pending[:split]
            pending = pending[split:]
        tail = _collapse(pending)
        while tail and tail[-1] == "":
            tail.pop()
        layout.tail = ([""] if pending and pending[0] == "" and tail else []) + tail
        return layout


def _collapse(lines: list[str]) -> list[str]:
    """Blank markers: leading ones dropped, runs made one (a trailing one is kept: a
    comment block separated from its item by a blank line stays separated)."""
    result: list[str] = []
    for line in lines:
        if line == "" and (not result or result[-1] == ""):
            continue
        result.append(line)
    return result


# --- writing ------------------------------------------------------------------------------


class _Writer:
    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        self.lines: list[str] = []
        self.comment_of: dict[int, str] = {}  # line index -> its trailing comment

    def text(self) -> str:
        lines = list(self.lines)
        # Align the trailing comments of each run of consecutive commented lines.
        index = 0
        while index < len(lines):
            if index not in self.comment_of:
                index += 1
                continue
            end = index
            while end + 1 < len(lines) and end + 1 in self.comment_of:
                end += 1
            column = max(len(lines[i]) for i in range(index, end + 1)) + 2
            for i in range(index, end + 1):
                lines[i] = lines[i].ljust(column) + self.comment_of[i]
            index = end + 1
        lines += self.layout.tail
        while lines and lines[0] == "":
            lines.pop(0)
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines) + "\n" if lines else ""

    def document(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if not _is_table(value) and not _is_array_of_tables(value):
                self.key_value((key,), key, value, "")
        for key, value in data.items():
            if _is_table(value):
                if value and all(_is_table(child) for child in value.values()):
                    # A table of tables (sites, pools, …): a header per resource.
                    self.comments((key,), "")
                    for name, child in value.items():
                        self.table((key, name), child)
                else:
                    self.table((key,), value)
            elif _is_array_of_tables(value):
                for index, element in enumerate(value):
                    self.table((key, index), element, array_key=(key,))

    def table(self, path: KeyPath, body: dict[str, Any], *, array_key: KeyPath = ()) -> None:
        if self.lines:
            self.lines.append("")
        self.comments(path, "", blank=False)
        header = f"[[{_dotted(array_key)}]]" if array_key else f"[{_dotted(path)}]"
        self.add(path, header)
        self.after(path, "")
        for key, value in body.items():
            self.key_value((*path, key), key, value, "")

    def key_value(self, path: KeyPath, key: str, value: Any, indent: str) -> None:
        self.comments(path, indent)
        start = f"{indent}{_key(key)} = "
        if isinstance(value, list) and value and self.array_is_long(path, value, len(start)):
            self.add(path, start + "[")
            for index, element in enumerate(value):
                element_path = (*path, index)
                self.comments(element_path, indent + INDENT)
                self.add(element_path, f"{indent}{INDENT}{_inline(element)},")
                self.after(element_path, indent + INDENT)
            self.lines.append(f"{indent}]")
        else:
            self.add(path, start + _inline(value))
        self.after(path, indent)

    def array_is_long(self, path: KeyPath, value: list[Any], prefix: int) -> bool:
        layout = self.layout
        for index in range(len(value)):
            element = (*path, index)
            if element in layout.leading or element in layout.trailing or element in layout.after:
                return True
        return prefix + len(_inline(value)) > LINE_LENGTH

    def comments(self, path: KeyPath, indent: str, *, blank: bool = True) -> None:
        if blank and path in self.layout.blank_before and self.lines and self.lines[-1] != "":
            self.lines.append("")
        for line in self.layout.leading.get(path, []):
            self.lines.append(f"{indent}{line}" if line else "")

    def after(self, path: KeyPath, indent: str) -> None:
        for line in self.layout.after.get(path, []):
            self.lines.append(f"{indent}{line}")

    def add(self, path: KeyPath, line: str) -> None:
        comment = self.layout.trailing.get(path)
        if comment:
            self.comment_of[len(self.lines)] = comment
        self.lines.append(line)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _key(key: str) -> str:
    if _BARE_KEY.match(key):
        return key
    return tomli_w.dumps({key: True}).rsplit(" = ", 1)[0]


def _dotted(path: KeyPath) -> str:
    return ".".join(_key(str(part)) for part in path)


def _inline(value: Any) -> str:
    """A value on one line: tables inline, arrays in brackets, scalars by tomli-w."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split(" = ", 1)[1].rstrip("\n")
