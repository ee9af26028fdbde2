"""One conformance suite for every backend (the contract in costor/store/backends/base.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from costor.errors import BackendError, ObjectNotFound
from costor.store.backends import Backend, LocalBackend, MemoryBackend


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
    else:
        yield LocalBackend(tmp_path / "objects")


def test_put_get_roundtrip(backend: Backend) -> None:
    backend.put("packs/ab/cd/abcd", b"payload")
    assert backend.get("packs/ab/cd/abcd") == b"payload"
    assert backend.exists("packs/ab/cd/abcd")


def test_put_is_idempotent(backend: Backend) -> None:
    backend.put("index/x", b"same")
    backend.put("index/x", b"same")
    assert backend.get("index/x") == b"same"
    assert [i.name for i in backend.list("index/")] == ["index/x"]


def test_missing_object_raises_not_found(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.get("snapshots/nope")
    with pytest.raises(ObjectNotFound):
        backend.get_range("snapshots/nope", 0, 1)
    assert not backend.exists("snapshots/nope")


def test_get_range_exact_or_error(backend: Backend) -> None:
    backend.put("p", bytes(range(100)))
    assert backend.get_range("p", 10, 5) == bytes(range(10, 15))
    with pytest.raises(BackendError):
        backend.get_range("p", 98, 5)


def test_list_by_prefix_with_sizes(backend: Backend) -> None:
    backend.put("packs/00/11/a", b"1")
    backend.put("packs/22/33/b", b"22")
    backend.put("index/c", b"333")
    listed = {i.name: i.size for i in backend.list("packs/")}
    assert listed == {"packs/00/11/a": 1, "packs/22/33/b": 2}
    assert {i.name for i in backend.list("")} == {"packs/00/11/a", "packs/22/33/b", "index/c"}


def test_delete_missing_is_not_an_error(backend: Backend) -> None:
    backend.put("keys/k", b"x")
    backend.delete("keys/k")
    backend.delete("keys/k")
    assert not backend.exists("keys/k")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a//b", "a/./b", "", "a/../b"])
def test_names_that_escape_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(BackendError):
        backend.put(name, b"x")


def test_concurrent_puts(backend: Backend) -> None:
    def writer(n: int) -> None:
        for i in range(20):
            backend.put(f"packs/{n:02d}/{i:02d}/obj", bytes([n, i]) * 100)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(backend.list("packs/"))) == 160
    assert backend.get("packs/03/07/obj") == bytes([3, 7]) * 100


def test_local_put_leaves_no_partial_object(tmp_path: Path) -> None:
    """A temporary file from a killed writer is never listed as an object."""
    backend = LocalBackend(tmp_path / "objects")
    backend.put("packs/aa/bb/done", b"complete")
    partial = tmp_path / "objects" / "packs" / "aa" / "bb" / "next.tmp-123456"
    partial.write_bytes(b"half")
    assert [i.name for i in backend.list("packs/")] == ["packs/aa/bb/done"]
    assert backend.cleanup_temporaries() == 1
