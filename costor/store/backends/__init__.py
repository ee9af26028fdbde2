"""Storage backends: named immutable objects behind one protocol (see ``base``), found
by location scheme in ``registry``. The in-memory backend (``memory``, for tests and
the conformance suite) is imported from its module, so no command loads it."""

from costor.store.backends.base import Backend, ObjectInfo
from costor.store.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend", "ObjectInfo"]
