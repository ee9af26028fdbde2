"""The progress interface the use cases report to, for the edges that draw it (the
CLI's terminal bar; later a server's task stream) without reaching into the engine.

It is the engine's own :class:`costor.store.progress.Progress`: the engine reports from
its worker threads, so an implementation must be thread-safe.
"""

from __future__ import annotations

from costor.store.progress import Progress

__all__ = ["Progress"]
