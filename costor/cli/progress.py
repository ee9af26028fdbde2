"""The terminal progress bar (files, bytes, rate, ETA) for backup, restore and check.

Shown only when stderr is a terminal and ``--json`` is off; tqdm is imported only then.
The engine reports from many threads, so updates go through one lock.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from costor.store.progress import Progress


class BarProgress(Progress):
    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._lock = threading.Lock()
        self._files = 0
        self._total_files: int | None = None
        self._bar: Any = tqdm(
            desc=description,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.2,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
            "[{elapsed}<{remaining}, {rate_fmt}] {postfix}",
        )
        self.warnings: list[tuple[str, str]] = []

    def set_total(self, files: int, size: int) -> None:
        with self._lock:
            self._total_files = files
            self._bar.total = size
            self._bar.refresh()

    def advance(self, files: int = 0, size: int = 0) -> None:
        with self._lock:
            self._files += files
            if size:
                self._bar.update(size)
            if files:
                total = f"/{self._total_files}" if self._total_files is not None else ""
                self._bar.set_postfix_str(f"{self._files}{total} files", refresh=False)

    def warning(self, path: str, message: str) -> None:
        with self._lock:
            self._bar.write(f"costor: warning: {path}: {message}", file=sys.stderr)

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class WarningsOnly(Progress):
    """No bar (not a terminal, or --json): warnings still reach stderr as they happen."""

    def warning(self, path: str, message: str) -> None:
        print(f"costor: warning: {path}: {message}", file=sys.stderr)


def make_progress(description: str, *, json_output: bool) -> Progress:
    if not json_output and sys.stderr.isatty():
        return BarProgress(description)
    return WarningsOnly()
