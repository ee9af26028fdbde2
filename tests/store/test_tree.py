"""Tree blobs: the canonical encoding never drifts (an unchanged directory must encode to
the bytes already in the pool, or it would not deduplicate), and decoding gives back
every field."""

from __future__ import annotations

import json
from dataclasses import replace

from costor.store.tree import (
    DIR,
    FILE,
    SYMLINK,
    Node,
    decode_tree,
    encode_tree,
    find_doc,
    replace_docs,
)
from costor.util import jsonfast


def every_field() -> list[Node]:
    """Nodes whose fields all differ, names not in order, non-UTF-8 bytes included."""
    return [
        Node(
            name=b"z-file",
            type=FILE,
            mode=0o100640,
            uid=1001,
            gid=1002,
            user="alice",
            group="staff",
            mtime_ns=1_700_000_000_000_000_003,
            ctime_ns=1_700_000_000_000_000_004,
            size=5,
            inode=6,
            device=7,
            links=2,
            content=[bytes(range(32)), bytes(range(32, 64))],
            xattrs={"user.b": b"\x00\xff", "user.a": b"text"},
        ),
        Node(name=b"a-dir", type=DIR, mode=0o40755, subtree=bytes(range(64, 96))),
        Node(name=b"\xffraw", type=SYMLINK, mode=0o120777, target=b"to-\xfe-there"),
        Node(name="dév".encode(), type="chardev", mode=0o20600, rdev=259),
    ]


def test_decoding_gives_back_every_field() -> None:
    nodes = every_field()
    assert decode_tree(encode_tree(nodes)) == sorted(nodes, key=lambda node: node.name)


def test_the_encoding_is_canonical() -> None:
    data = encode_tree(every_field())
    # Keys sorted, no whitespace, entries by raw name: exactly what a sorting encoder
    # gives for the same document.
    document = json.loads(data)
    assert (
        data
        == json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert [node.get("name", node.get("name_b64")) for node in document["nodes"]] == [
        "a-dir",
        "dév",
        "z-file",
        "/3Jhdw==",
    ]
    assert encode_tree(list(reversed(every_field()))) == data


def test_the_encoding_of_a_file_has_not_changed() -> None:
    """The bytes pools already hold: a change here is a format change (docs/format.md)."""
    node = every_field()[0]
    assert encode_tree([node]).decode() == (
        '{"nodes":[{"content":["000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",'
        '"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"],'
        '"ctime_ns":1700000000000000004,"device":7,"gid":1002,"group":"staff","inode":6,'
        '"links":2,"mode":33184,"mtime_ns":1700000000000000003,"name":"z-file","size":5,'
        '"type":"file","uid":1001,"user":"alice",'
        '"xattrs":{"user.a":"dGV4dA==","user.b":"AP8="}}]}'
    )


def awkward_names() -> list[Node]:
    """Names the byte-level search must not confuse: quotes, backslashes, ``,{"``, a
    name that is a prefix of another, non-UTF-8, non-ASCII, and a node whose xattrs hold
    a key ``name`` whose value looks like another entry's name."""
    names = [
        b'q"uote',
        b"back\\slash",
        b',{"name":"x",',
        b"pre",
        b"prefix",
        b"\xff\xfe",
        "é".encode(),
    ]
    nodes = [
        Node(name=name, type=FILE, size=i, content=[bytes([i]) * 32])
        for i, name in enumerate(names)
    ]
    nodes.append(Node(name=b"dir", type=DIR, subtree=bytes(32)))
    nodes.append(Node(name=b"x", type=SYMLINK, target=b"pre"))
    # base64 of b"pre" is "cHJl": the key is found first in the xattrs of "a-tricky".
    nodes.append(Node(name=b"a-tricky", type=FILE, xattrs={"name": b"pre", "z": b""}))
    nodes.append(Node(name=b"cHJl", type=FILE))
    return nodes


def test_an_entry_is_found_and_replaced_in_the_bytes_as_encoding_would_write_it() -> None:
    nodes = awkward_names()
    data = encode_tree(nodes)
    assert find_doc(data, b"cHJl") is None  # not that document's name: the caller decodes
    for node in nodes:
        found = find_doc(data, node.name)
        if node.name == b"cHJl":
            continue
        assert found is not None, node.name
        start, end, doc = found
        assert Node.from_dict(doc) == node
        assert json.loads(data[start:end]) == doc
    assert find_doc(data, b"absent") is None
    assert find_doc(data, b"pr") is None  # a prefix of a name is not that name
    # Replacing any set of entries gives the bytes of encoding the changed nodes.
    changed = [replace(node, size=node.size + 100, mtime_ns=7) for node in nodes]
    searchable = [i for i, node in enumerate(nodes) if node.name != b"cHJl"]
    for chosen in ([0], [3, 4], searchable):
        replacements = []
        expected = list(nodes)
        for i in chosen:
            start, end, _doc = find_doc(data, nodes[i].name)  # type: ignore[misc]
            replacements.append((start, end, jsonfast.dumps(changed[i].to_dict())))
            expected[i] = changed[i]
        assert replace_docs(data, replacements) == encode_tree(expected)


def test_a_tree_not_in_canonical_form_is_not_searched() -> None:
    nodes = awkward_names()
    docs = [node.to_dict() for node in sorted(nodes, key=lambda n: n.name)]
    spaced = json.dumps({"nodes": docs}).encode()  # ", " and ASCII escapes
    assert all(find_doc(spaced, node.name) is None for node in nodes)
    assert find_doc(encode_tree([]), b"pre") is None
