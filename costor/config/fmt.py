"""``costor fmt``: one canonical layout for inventory and profile files, comments kept.

Why not ``tomli_w.dumps`` of the parsed document alone: it drops every comment (an
inventory is mostly its comments), writes ``passphrase = { env = … }`` as a
``[pools.x.passphrase]`` sub-table and ``[[moved]]`` blocks as one inline array. So the
layout is decided here and every *value* is written by tomli-w. The layout, like
``terraform fmt``'s, has no options:

- top-level keys first, then tables in the order they were written (grouped by their
  first name: every ``[clients.*]`` together, where the first was); resource tables
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
  are aligned, two spaces after the longest line;
- a comment that was inside what becomes one line (the keys of a ``[clients.web1.ssh]``
  table, a ``[pools]`` header that disappears) moves above that line, in its order;
- values are tomli-w's: multi-line strings become one-line strings with ``\n``
  escapes, ``0o755`` becomes ``493``; the text is LF-only, without a byte-order mark.

The result is checked: it must parse to exactly the same data (types included) and
hold the same comments, or nothing is written.
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
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class FormatError(ValueError):
    """The formatted text would not mean the same (a bug here; nothing is written)."""


def format_toml(text: str) -> str:
    """``text`` (valid TOML) in the canonical layout. Raises ``tomllib.TOMLDecodeError``.

    A byte-order mark is dropped and CRLF line ends become LF: the canonical text has
    neither.
    """
    text = text.removeprefix("\ufeff")
    data = tomllib.loads(text)
    layout = _Layout.read(text)
    writer = _Writer(layout)
    writer.document(data)
    result = writer.text()
    try:
        reparsed = tomllib.loads(result)
    except tomllib.TOMLDecodeError as error:
        raise FormatError(f"the formatted document is not valid TOML: {error}") from error
    if not _same_data(reparsed, data):
        raise FormatError("the formatted document does not parse to the same data")
    if _comment_texts(result) != _comment_texts(text):
        raise FormatError("the formatted document does not hold the same comments")
    return result


def _same_data(left: Any, right: Any) -> bool:
    """Equal *and* of the same types: ``1 == 1.0 == True`` and ``nan != nan`` in Python,
    but a formatter must neither turn an integer into a float nor choke on a NaN."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same_data(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_data, left, right))
    return repr(left) == repr(right)  # repr tells nan, -0.0 and time zones apart


def _comment_texts(text: str) -> list[str]:
    return sorted(comment.text for comment in scan_layout(text)[1])


# --- where comments and blank lines were -------------------------------------------------

_Pending = list[tuple[int, str]]  # (line number, comment text); "" marks a blank line


@dataclass
class _Layout:
    leading: dict[KeyPath, list[str]] = field(default_factory=dict)  # "" marks a blank line
    after: dict[KeyPath, list[str]] = field(default_factory=dict)  # right below the item
    trailing: dict[KeyPath, str] = field(default_factory=dict)
    blank_before: set[KeyPath] = field(default_factory=set)
    tail: list[str] = field(default_factory=list)
    # Every comment above with its line and its item: the comments of the items inside a
    # value written on one line (``ssh = { … }`` from a ``[clients.web1.ssh]`` table)
    # have no line of their own and are taken from here, in the order they were written.
    owners: list[tuple[int, KeyPath, str]] = field(default_factory=list)

    @classmethod
    def read(cls, text: str) -> _Layout:
        return _LayoutReader(text).read()

    def attach(self, where: dict[KeyPath, list[str]], path: KeyPath, block: _Pending) -> None:
        if not block:
            return
        where.setdefault(path, []).extend(t for _n, t in block)
        self.owners.extend((n, path, t) for n, t in block if t)

    def attach_trailing(self, path: KeyPath, number: int, comment: str) -> None:
        if path in self.trailing:  # a second one: `x = [  # a` … `]  # b`
            self.attach(self.after, path, [(number, comment)])
        else:
            self.trailing[path] = comment
            self.owners.append((number, path, comment))

    def comments_inside(self, path: KeyPath) -> list[str]:
        """The comments of the items strictly inside ``path``, in the order written."""
        depth = len(path)
        inside = [
            (number, text)
            for number, owner, text in self.owners
            if len(owner) > depth and owner[:depth] == path
        ]
        return [text for _number, text in sorted(inside)]


class _LayoutReader:
    """One pass over the lines: each comment and blank line is given to an item.

    Comment lines and blank lines wait in ``pending`` until the next line with code: they
    are that item's leading block, except that comments right below the previous item and
    then a blank line are the previous item's ``after`` block.
    """

    def __init__(self, text: str) -> None:
        positions, comments = scan_layout(text)
        self.text = text
        # Per line, the keys and elements starting on it: (column, depth, path).
        self.items: dict[int, list[tuple[int, int, KeyPath]]] = {}
        for path in positions:
            position = positions.get(path)
            assert position is not None
            self.items.setdefault(position.line, []).append((position.column, len(path), path))
        self.comment_at = {c.position.line: c for c in comments}
        self.in_string, self.depth_at_end = _value_lines(text)
        self.layout = _Layout()
        self.pending: _Pending = []
        self.last_path: KeyPath | None = None  # the item the next comment line is below
        self.statement_path: KeyPath | None = None  # the key whose value spans lines

    def read(self) -> _Layout:
        # Lines as the scanner counts them: only "\n" ends one (str.splitlines would also
        # split at U+2028 or U+0085 inside a string and shift every line after it).
        for number, line in enumerate(self.text.split("\n"), start=1):
            comment = self.comment_at.get(number)
            code = line[: comment.position.column - 1] if comment else line
            if not code.strip() and number not in self.in_string:
                if comment:
                    self.pending.append((number, comment.text))
                elif self.pending or self.last_path is not None:
                    self.pending.append((number, ""))
                continue
            if number in self.items:
                self.item_line(number)
            else:
                self.value_line(number)
            if comment and self.last_path is not None:
                self.layout.attach_trailing(self.last_path, number, comment.text)
        self.finish()
        return self.layout

    def depth_before(self, number: int) -> int:
        return self.depth_at_end.get(number - 1, 0)

    def item_line(self, number: int) -> None:
        """A line that starts a key or an array element."""
        layout, pending = self.layout, self.pending
        # The line's item: the leftmost key or element on it (ties: the outer).
        path = min(self.items[number])[2]
        # Comments right below the previous item, then a blank line, are that item's —
        # unless it is an array still open, whose first element this line starts.
        opened = self.depth_before(number) > 0 and _inside(path, self.last_path)
        if self.last_path is not None and not opened and pending and pending[0][1] != "":
            blanks = [i for i, (_n, t) in enumerate(pending) if t == ""]
            if blanks:
                layout.attach(layout.after, self.last_path, pending[: blanks[0]])
                pending = pending[blanks[0] :]
        if pending and pending[0][1] == "":
            layout.blank_before.add(path)
        layout.attach(layout.leading, path, _collapse(pending))
        self.pending = []
        if self.depth_before(number) == 0:
            self.statement_path = path
        self.last_path = self.last_element(number, path)

    def last_element(self, number: int, path: KeyPath) -> KeyPath:
        """What a comment at the end of this line follows: the last element of an array
        still open there (``paths = ["/etc",  # config``, ``  "a", "b",  # c``) or the
        line's item."""
        if path and isinstance(path[-1], int):
            parent = path[:-1]  # elements of the same array
        elif self.depth_at_end.get(number, 0) > self.depth_before(number):
            parent = path  # the array this key opens
        else:
            return path
        elements = [item for item in self.items[number] if item[2][:-1] == parent]
        elements = [item for item in elements if isinstance(item[2][-1], int)]
        return max(elements)[2] if elements else path

    def value_line(self, number: int) -> None:
        """A line inside a value that starts no item: a closing bracket, the end of a
        multi-line string. Comments above it are inside the value, after its last element;
        once the value is closed, what follows is after its key."""
        if self.last_path is not None:
            self.layout.attach(self.layout.after, self.last_path, [p for p in self.pending if p[1]])
        self.pending = []
        if self.depth_at_end.get(number) == 0 and self.statement_path is not None:
            self.last_path = self.statement_path

    def finish(self) -> None:
        """The comments below the last item: its ``after`` block, then the file's tail."""
        layout, pending = self.layout, self.pending
        if self.last_path is not None and pending and pending[0][1] != "":
            blanks = [i for i, (_n, t) in enumerate(pending) if t == ""]
            split = blanks[0] if blanks else len(pending)
            layout.attach(layout.after, self.last_path, pending[:split])
            pending = pending[split:]
        tail = [t for _n, t in _collapse(pending)]
        while tail and tail[-1] == "":
            tail.pop()
        layout.tail = ([""] if pending and pending[0][1] == "" and tail else []) + tail


def _inside(path: KeyPath, outer: KeyPath | None) -> bool:
    """``path`` is ``outer`` or inside it."""
    return outer is not None and path[: len(outer)] == outer


def _collapse(lines: _Pending) -> _Pending:
    """Blank markers: leading ones dropped, runs made one (a trailing one is kept: a
    comment block separated from its item by a blank line stays separated)."""
    result: _Pending = []
    for number, line in lines:
        if line == "" and (not result or result[-1][1] == ""):
            continue
        result.append((number, line))
    return result


def _value_lines(text: str) -> tuple[set[int], dict[int, int]]:
    """For ``text`` (valid TOML): the lines that begin inside a multi-line string (their
    blank lines are not layout), and the bracket depth at the end of each line (0: no
    array or inline table is open any more)."""
    in_string: set[int] = set()
    depth_at_end: dict[int, int] = {}
    depth = 0
    line = 1
    after_equals = False  # in a top-level key/value line: a "[" opens an array, not a header
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\n":
            depth_at_end[line] = depth
            line += 1
            if depth == 0:
                after_equals = False
            index += 1
        elif char == "#":
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
        elif char in "\"'":
            end = _string_end(text, index)
            for _newline in range(text.count("\n", index, end)):
                depth_at_end[line] = depth
                line += 1
                in_string.add(line)
            index = end
        elif char == "[" and depth == 0 and not after_equals:
            index = _header_end(text, index)
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            elif char == "=" and depth == 0:
                after_equals = True
            index += 1
    depth_at_end[line] = depth
    return in_string, depth_at_end


def _string_end(text: str, index: int) -> int:
    """Offset just past the string (any of the four kinds) that starts at ``index``."""
    quote = text[index]
    escapes = quote == '"'
    if text.startswith(quote * 3, index):
        position = index + 3
        while True:
            if escapes and text[position] == "\\":
                position += 2
            elif text.startswith(quote * 3, position):
                # Up to two quotes right before the delimiter belong to the content.
                end = position + 3
                while end < len(text) and text[end] == quote and end - position < 5:
                    end += 1
                return end
            else:
                position += 1
    position = index + 1
    while text[position] != quote:
        position += 2 if escapes and text[position] == "\\" else 1
    return position + 1


def _header_end(text: str, index: int) -> int:
    """Offset just past the ``[table]`` or ``[[array]]`` header that starts at ``index``."""
    position = index + 1
    while text[position] != "]":
        position = _string_end(text, position) if text[position] in "\"'" else position + 1
    return position + (2 if text[index + 1] == "[" else 1)


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
            if _is_table(value) and value and all(_is_table(child) for child in value.values()):
                # A table of tables (sites, pools, …): a header per resource.
                self.headerless((key,))
                for name, child in value.items():
                    self.table((key, name), child)
            elif _is_table(value):
                self.table((key,), value)
            elif _is_array_of_tables(value):
                self.headerless((key,))
                for index, element in enumerate(value):
                    self.table((key, index), element, array_key=(key,))

    def headerless(self, path: KeyPath) -> None:
        """The comments of a table that gets no line of its own (the ``[pools]`` above
        ``[pools.main]``, ``moved = [`` of an inline array of tables): comment lines
        above what follows."""
        layout = self.layout
        trailing = [layout.trailing[path]] if path in layout.trailing else []
        block = [*layout.leading.get(path, []), *trailing, *layout.after.get(path, [])]
        if any(block):
            self.blank()
            self.lines.extend(block)

    def table(self, path: KeyPath, body: dict[str, Any], *, array_key: KeyPath = ()) -> None:
        self.blank()
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
                # Blank lines between elements are kept, not one right after the "[".
                self.comments(element_path, indent + INDENT, blank=index > 0)
                self.comments_inside(element_path, indent + INDENT)
                self.add(element_path, f"{indent}{INDENT}{_inline(element)},")
                self.after(element_path, indent + INDENT)
            self.lines.append(f"{indent}]")
        else:
            self.comments_inside(path, indent)
            self.add(path, start + _inline(value))
        self.after(path, indent)

    def array_is_long(self, path: KeyPath, value: list[Any], prefix: int) -> bool:
        if self.layout.comments_inside(path):
            return True
        return prefix + len(_inline(value)) > LINE_LENGTH

    def blank(self) -> None:
        """One blank line, unless at the start or after one already."""
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def comments(self, path: KeyPath, indent: str, *, blank: bool = True) -> None:
        if blank and path in self.layout.blank_before:
            self.blank()
        for line in self.layout.leading.get(path, []):
            self.lines.append(f"{indent}{line}" if line else "")

    def comments_inside(self, path: KeyPath, indent: str) -> None:
        """The comments of the items inside a value written on one line, above it."""
        for line in self.layout.comments_inside(path):
            self.lines.append(f"{indent}{line}")

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
    # fullmatch, not match(...$): "$" also matches before a final newline ("a\n").
    if _BARE_KEY.fullmatch(key):
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
