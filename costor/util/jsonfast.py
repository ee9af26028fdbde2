"""Compact JSON on the hot paths (tree blobs, the helper's entry frames), through orjson.

Why orjson and not the standard library: a pull re-encodes every directory in which a
file changed and decodes the parent's version of it. For a 100-entry tree (28 KiB)
``json.dumps`` took 0.62 ms and ``orjson.dumps`` 0.06 ms; ``json.loads`` 0.60–0.78 ms
and ``orjson.loads`` 0.24 ms, with the check below (tests/util/test_jsonfast.py checks
that the bytes are the same; docs/benchmarks-ssh.md shows the effect on a pull).

The bytes are the standard library's ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False).encode()`` for every document CoStor writes (strings, integers,
lists, objects with string keys, true/false/null): the tree format's canonical form
does not change. Where orjson differs, the standard library is used instead:

- it refuses integers beyond 64 bits and strings holding lone surrogates (``dumps``
  then falls back; ``json`` encodes the first and fails on the second, as before);
- it reads integers beyond 64 bits as floats, silently: ``loads`` keeps orjson's
  reading only when orjson writes it back to the very bytes read (0.03 ms for that
  tree; a regular expression looking for wide numbers took 0.4 ms), so anything it
  could read otherwise than ``json`` (a wide integer, an escaped character, spacing)
  is read by ``json``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, key order kept, non-ASCII unescaped."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: a wide integer, a surrogate
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data: bytes, *, errors: str = "strict") -> Any:
    """A document from UTF-8 JSON bytes. ``errors="surrogateescape"``: bytes that are
    not UTF-8 (and escaped lone surrogates) are read as Python's file system encoding
    reads them (the helper's entries: paths are bytes on POSIX)."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # not UTF-8, a lone surrogate, not JSON: the standard library decides
    else:
        if orjson.dumps(document) == data:
            return document
    return json.loads(data.decode("utf-8", errors))
