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


def wants_totals(progress: Progress) -> bool:
    """Whether ``progress`` uses totals (it overrides :meth:`Progress.set_total`).
    Counting them can cost a walk of its own (a restore walks every tree twice), done
    only when something shows them."""
    return type(progress).set_total is not Progress.set_total
