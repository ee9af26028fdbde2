"""costor.util.jsonfast writes the standard library's bytes and reads what it reads."""

from __future__ import annotations

import json

import pytest

from costor.store.tree import Node, decode_tree, encode_tree
from costor.util import jsonfast


def stdlib(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


EVERY_CHARACTER = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


@pytest.mark.parametrize(
    "document",
    [
        {"nodes": [EVERY_CHARACTER, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, True, None]},
        {"b": [], "a": {}, "z": {"y": '\u2028\u2029\x7f\x00\x1f"\\/'}},  # key order kept
        {"wide": 2**64, "negative": -(2**70)},  # beyond orjson: the standard library
    ],
)
def test_dumps_is_the_standard_librarys_bytes(document: object) -> None:
    assert jsonfast.dumps(document) == stdlib(document)
    assert jsonfast.loads(jsonfast.dumps(document)) == document


def test_wide_integers_are_read_as_integers() -> None:
    for number in (2**64, 2**64 - 1, 10**19, -(10**18) - 7, -(2**63) - 1, 10**40):
        for text in (f"[{number}]", f'{{"a":{number}}}', f"[1,{number}]"):
            value = jsonfast.loads(text.encode())
            assert value == json.loads(text)
            inner = value[-1] if isinstance(value, list) else value["a"]
            assert type(inner) is int


def test_surrogates_fall_back_to_the_standard_library() -> None:
    with pytest.raises(UnicodeEncodeError):  # as json.dumps(...).encode() did
        jsonfast.dumps(["\udcff"])
    escaped = json.dumps(["caf\udce9"]).encode()  # the helper writes ensure_ascii JSON
    assert jsonfast.loads(escaped, errors="surrogateescape") == ["caf\udce9"]
    assert jsonfast.loads(b'["caf\xe9"]', errors="surrogateescape") == ["caf\udce9"]
    with pytest.raises(UnicodeDecodeError):
        jsonfast.loads(b'["caf\xe9"]')


def test_what_orjson_would_write_otherwise_is_read_by_json() -> None:
    for text in ('{"a": 1.5, "b" : [1, 2]}', '["\\u00e9\\n"]', '{"a":1,"a":2}', "[1e3,-0.0]"):
        assert jsonfast.loads(text.encode()) == json.loads(text)


def test_bad_json_is_a_value_error() -> None:
    for data in (b"", b"[1,", b'{"a" 1}', b"nope"):
        with pytest.raises(ValueError):
            jsonfast.loads(data)


def test_a_tree_encodes_as_before() -> None:
    nodes = [
        Node(name=b"caf\xc3\xa9", type="file", mode=0o644, size=3, content=[b"\x01" * 32]),
        Node(name=b"\xff\xfe", type="symlink", target=b"\x80x"),
        Node(name=b"d", type="dir", subtree=b"\x02" * 32, mtime_ns=2**64 + 5),
    ]
    encoded = encode_tree(nodes)
    docs = [node.to_dict() for node in sorted(nodes, key=lambda n: n.name)]
    assert encoded == stdlib({"nodes": docs})
    assert decode_tree(encoded) == sorted(nodes, key=lambda n: n.name)
