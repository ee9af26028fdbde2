"""The key-position scanner: every key tomllib sees has a position, and it is right."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from costor.config.positions import KeyPath, Position, scan_positions

DOCUMENTS = {
    "tables_and_comments": """\
# leading comment
title = "x"  # trailing comment
[pools.main]   # header comment
path = "/srv"
[pools."with.dot"]
'literal key' = 1
"quoted \\" key" = 2
""",
    "dotted_and_inline": """\
a.b.c = 1
a . d = { e = 1, f.g = [1, { h = 2 }] }
[t]
x.y = "z"
""",
    "strings": '''\
s1 = "a # not a comment [not.a.header]"
s2 = 'b = c'
s3 = """multi
[not.a.header]
x = "not a key" \\"""""
s4 = \'\'\'lit
eral = 1\'\'\'
after = true
''',
    "arrays_of_tables": """\
[[moved]]
from = "a"
[[moved]]
from = "b"
[moved.meta]
k = 1
[[a]]
[[a.b]]
x = 1
[[a.b]]
x = 2
[[a]]
[[a.b]]
x = 3
""",
    "multiline_arrays": """\
list = [
  "a",  # one
  [1, 2],
  { k = "v" },
]
dates = [1979-05-27T07:32:00Z, 1979-05-27 07:32:00-08:00, 07:32:00]
nums = [1_000, 0x1F, +inf, -nan, 3.14e2]
""",
}


def key_paths(value: Any, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every key path in parsed TOML, array elements included."""
    paths: list[KeyPath] = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths.append((*prefix, key))
            paths.extend(key_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.append((*prefix, index))
            paths.extend(key_paths(item, (*prefix, index)))
    return paths


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_key_has_a_position_that_points_at_it(name: str) -> None:
    text = DOCUMENTS[name]
    data = tomllib.loads(text)
    positions = scan_positions(text)
    lines = text.splitlines()
    for path in key_paths(data):
        position = positions.get(path)
        assert position is not None, path
        at = lines[position.line - 1][position.column - 1 :]
        last = path[-1]
        if isinstance(last, str) and not at.startswith("["):
            # A key: the text there is the key, bare or quoted.
            assert at.startswith((last, f'"{last}', f"'{last}")) or "\\" in at, (path, at)
    # Nothing recorded that tomllib does not have (no keys invented inside strings).
    assert set(positions) == set(key_paths(data))


def test_positions_of_interesting_keys() -> None:
    text = DOCUMENTS["dotted_and_inline"]
    positions = scan_positions(text)
    assert positions.get(("a",)) == Position(1, 1)
    assert positions.get(("a", "b", "c")) == Position(1, 5)
    assert positions.get(("a", "d")) == Position(2, 5)
    assert positions.get(("a", "d", "f", "g")) == Position(2, 20)
    assert positions.get(("a", "d", "f", "g", 1, "h")) == Position(2, 30)
    assert positions.get(("t",)) == Position(3, 1)


def test_tables_map_to_their_header_and_arrays_of_tables_carry_indices() -> None:
    positions = scan_positions(DOCUMENTS["arrays_of_tables"])
    assert positions.get(("moved", 0)) == Position(1, 1)
    assert positions.get(("moved", 1, "from")) == Position(4, 1)
    assert positions.get(("moved", 1, "meta", "k")) == Position(6, 1)
    assert positions.get(("a", 0, "b", 1, "x")) == Position(11, 1)
    assert positions.get(("a", 1, "b", 0, "x")) == Position(14, 1)


def test_find_falls_back_to_the_nearest_ancestor() -> None:
    positions = scan_positions(DOCUMENTS["tables_and_comments"])
    assert positions.find(("pools", "main", "missing")) == Position(3, 1)
    assert positions.find(("nowhere",)) == Position(1, 1)
