"""Progress reporting from the engine to whoever displays it (the CLI's bar, later the
web UI's live view). The engine calls these from many threads; implementations must be
thread-safe and cheap. The default does nothing."""

from __future__ import annotations


class Progress:
    def set_total(self, files: int, size: int) -> None:
        """Totals, once known (a scanner may deliver them while work is under way)."""

    def advance(self, files: int = 0, size: int = 0) -> None:
        """Files finished and bytes processed since the last call."""

    def warning(self, path: str, message: str) -> None:
        """A problem with one item that does not stop the run."""

    def close(self) -> None:
        """The run is over."""
