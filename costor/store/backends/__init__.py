"""Storage backends: named immutable objects behind one protocol (see ``base``), found
by location scheme in ``registry``."""

from costor.store.backends.base import Backend, ObjectInfo
from costor.store.backends.local import LocalBackend
from costor.store.backends.memory import MemoryBackend

__all__ = ["Backend", "LocalBackend", "MemoryBackend", "ObjectInfo"]
