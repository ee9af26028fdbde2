"""Tree blobs: the canonical encoding never drifts (an unchanged directory must encode to
the bytes already in the pool, or it would not deduplicate), and decoding gives back
every field."""

from __future__ import annotations

import json

from costor.store.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree


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
