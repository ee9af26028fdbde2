"""Where each key of a TOML document is: key path -> (line, column).

Why a scanner of our own: ``tomllib`` (the parser we trust for values) returns plain dicts
with no positions, and ``tomlkit`` keeps whitespace and comments but exposes no line or
column per key in its public API (python-poetry/tomlkit#55, "Get the line and column
numbers of parsed elements", is still open; the add-on that works around it is a third
package to depend on). Diagnostics must say ``file:line:col`` (what editors and CI jump to), so this
module walks the text once more and records where every key starts.

The scanner is deliberately small because it only ever runs on text that ``tomllib`` has
already accepted: it never has to report a syntax error, only to skip values correctly
(strings of all four kinds, arrays, inline tables, scalars) and to follow the table
headers. Values are not decoded here.

Key paths are tuples like ``("clients", "web1", "ssh", "port")``. Elements of arrays,
including the tables of an array of tables (``[[moved]]``), carry their index:
``("moved", 0, "from")``. What a path maps to:

- a key in a key/value line or an inline table: the first character of that key
  (for a dotted key ``a.b.c = 1`` each prefix maps to its own segment);
- a table opened by a header ``[pools.main]`` or ``[[moved]]``: the ``[`` of the header,
  so "missing key in this table" points at the header; the header's prefixes (``pools``)
  map to their segment in the first header that names them;
- an array element: the first character of the element's value.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Position:
    """1-based line and column (columns count characters, a tab is one)."""

    line: int
    column: int


class PositionMap:
    """Read-only mapping of key paths to positions, with ancestor fallback."""

    def __init__(self, positions: dict[KeyPath, Position]) -> None:
        self._positions = dict(positions)

    def get(self, path: KeyPath) -> Position | None:
        """The position recorded for exactly this path, or None."""
        return self._positions.get(path)

    def find(self, path: KeyPath) -> Position:
        """The position of ``path`` or of its nearest recorded ancestor.

        A value that is absent from the document (a missing key) or that has no key of its
        own still gets a useful place: the table that should hold it. The document start
        is the last resort.
        """
        for end in range(len(path), -1, -1):
            found = self._positions.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def __contains__(self, path: object) -> bool:
        return path in self._positions

    def __iter__(self) -> Iterator[KeyPath]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)


def scan_positions(text: str) -> PositionMap:
    """Positions of every key in ``text``, which must be TOML that ``tomllib`` accepts."""
    return scan_layout(text)[0]


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment: where it starts and its text (from ``#`` to the line's end)."""

    position: Position
    text: str


def scan_layout(text: str) -> tuple[PositionMap, list[Comment]]:
    """Positions of every key and every comment (``costor fmt`` keeps comments)."""
    scanner = _Scanner(text)
    scanner.scan_document()
    return PositionMap(scanner.positions), scanner.comments


# Characters that can appear in a bare key (TOML 1.0 §Keys).
_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# A scalar value (number, boolean, date) ends at one of these.
_SCALAR_END = frozenset(",]}#\n\r")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.positions: dict[KeyPath, Position] = {}
        # Concrete path (indices included) of each array of tables -> element count so far,
        # so that [[a]] ... [a.b] ... [[a]] puts `b` under the right element of `a`.
        self.array_counts: dict[KeyPath, int] = {}
        self.current_table: KeyPath = ()
        self.comments: list[Comment] = []
        self._line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]

    # --- positions ---------------------------------------------------------------------

    def position_of(self, offset: int) -> Position:
        line_index = bisect.bisect_right(self._line_starts, offset) - 1
        return Position(line_index + 1, offset - self._line_starts[line_index] + 1)

    def record(self, path: KeyPath, offset: int, *, overwrite: bool = False) -> None:
        if overwrite or path not in self.positions:
            self.positions[path] = self.position_of(offset)

    # --- low-level reading ---------------------------------------------------------------

    def peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def skip_blanks(self) -> None:
        """Spaces and tabs only (inside a line)."""
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_blanks_newlines_comments(self) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#":
                start = self.pos
                self.skip_to_line_end()
                comment = self.text[start : self.pos].rstrip("\r \t")
                self.comments.append(Comment(self.position_of(start), comment))
            else:
                return

    def skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    # --- document structure --------------------------------------------------------------

    def scan_document(self) -> None:
        while True:
            self.skip_blanks_newlines_comments()
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                self.scan_header()
            else:
                self.scan_key_value(self.current_table)

    def scan_header(self) -> None:
        header_start = self.pos
        is_array = self.peek(1) == "["
        self.pos += 2 if is_array else 1
        self.skip_blanks()
        segments = self.scan_key()
        self.skip_blanks()
        self.pos += 2 if is_array else 1  # the closing ] or ]]

        concrete: KeyPath = ()
        for index, (segment, offset) in enumerate(segments):
            concrete += (segment,)
            self.record(concrete, offset)
            is_last = index == len(segments) - 1
            if is_last and is_array:
                element = self.array_counts.get(concrete, 0)
                self.array_counts[concrete] = element + 1
                concrete += (element,)
            elif concrete in self.array_counts:
                # A prefix naming an array of tables means its latest element.
                concrete += (self.array_counts[concrete] - 1,)
        self.record(concrete, header_start, overwrite=True)
        self.current_table = concrete

    def scan_key_value(self, table: KeyPath) -> None:
        segments = self.scan_key()
        path = table
        for segment, offset in segments:
            path += (segment,)
            self.record(path, offset)
        self.skip_blanks()
        self.pos += 1  # "="
        self.skip_blanks()
        self.scan_value(path)

    def scan_key(self) -> list[tuple[str, int]]:
        """A possibly dotted key; returns each segment with its offset."""
        segments: list[tuple[str, int]] = []
        while True:
            self.skip_blanks()
            start = self.pos
            char = self.peek()
            if char == '"':
                end = self.find_basic_string_end(self.pos + 1)
                raw = self.text[start:end]
                # Escapes in a quoted key are rare; let tomllib decode them exactly.
                segment = tomllib.loads(f"k = {raw}")["k"] if "\\" in raw else raw[1:-1]
                self.pos = end
            elif char == "'":
                end = self.text.index("'", self.pos + 1) + 1
                segment = self.text[start + 1 : end - 1]
                self.pos = end
            else:
                while self.peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                segment = self.text[start : self.pos]
            segments.append((segment, start))
            self.skip_blanks()
            if self.peek() != ".":
                return segments
            self.pos += 1

    # --- values --------------------------------------------------------------------------

    def scan_value(self, path: KeyPath) -> None:
        char = self.peek()
        if char == "[":
            self.scan_array(path)
        elif char == "{":
            self.scan_inline_table(path)
        elif char == '"':
            if self.text.startswith('"""', self.pos):
                self.pos = self.find_multiline_end(self.pos + 3, '"""', escapes=True)
            else:
                self.pos = self.find_basic_string_end(self.pos + 1)
        elif char == "'":
            if self.text.startswith("'''", self.pos):
                self.pos = self.find_multiline_end(self.pos + 3, "'''", escapes=False)
            else:
                self.pos = self.text.index("'", self.pos + 1) + 1
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1

    def scan_array(self, path: KeyPath) -> None:
        self.pos += 1  # "["
        index = 0
        while True:
            self.skip_blanks_newlines_comments()
            if self.peek() == "]":
                self.pos += 1
                return
            element = (*path, index)
            self.record(element, self.pos)
            self.scan_value(element)
            index += 1
            self.skip_blanks_newlines_comments()
            if self.peek() == ",":
                self.pos += 1

    def scan_inline_table(self, path: KeyPath) -> None:
        self.pos += 1  # "{"
        while True:
            # TOML 1.0 keeps inline tables on one line; skipping newlines and comments too
            # costs nothing and keeps the scanner right if tomllib ever accepts TOML 1.1.
            self.skip_blanks_newlines_comments()
            if self.peek() == "}":
                self.pos += 1
                return
            self.scan_key_value(path)
            self.skip_blanks_newlines_comments()
            if self.peek() == ",":
                self.pos += 1

    def find_basic_string_end(self, index: int) -> int:
        """Offset just past the closing quote of a one-line basic string."""
        while True:
            char = self.text[index]
            if char == "\\":
                index += 2
            elif char == '"':
                return index + 1
            else:
                index += 1

    def find_multiline_end(self, index: int, delimiter: str, *, escapes: bool) -> int:
        """Offset just past a multi-line string's closing delimiter.

        Up to two quote characters may sit right before the delimiter and belong to the
        content, so the closing run of quotes can be 3 to 5 long.
        """
        quote = delimiter[0]
        while True:
            if escapes and self.text[index] == "\\":
                index += 2
            elif self.text.startswith(delimiter, index):
                end = index + 3
                while end < len(self.text) and self.text[end] == quote and end - index < 5:
                    end += 1
                return end
            else:
                index += 1
