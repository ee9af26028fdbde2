"""The terminal progress bar (files, bytes, rate, ETA) for backup, restore and check.

Shown only when stderr is a terminal and ``--json`` is off; tqdm is imported only then,
and the bar is drawn only once the engine reports work (so an early error is not
printed after an empty bar). The engine reports from many threads, so updates go
through one lock.
"""

from __future__ import annotations

import shutil
import sys
import threading
from typing import Any

from costor.cli.output import terminal_text
from costor.ops.progress import Progress


class BarProgress(Progress):
    def __init__(self, description: str) -> None:
        self._description = description
        self._lock = threading.Lock()
        self._files = 0
        self._total_files: int | None = None
        self._bar: Any = None
        self._closed = False

    def _ensure_bar(self) -> Any:
        if self._bar is None and not self._closed:
            from tqdm import tqdm

            # A fresh pseudo-terminal reports 0×0; tqdm then computes -1 rows and draws
            # nothing. shutil falls back to a sane size (and honours $COLUMNS/$LINES).
            size = shutil.get_terminal_size((100, 24))
            self._bar = tqdm(
                desc=self._description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                ncols=size.columns,
                nrows=size.lines,
                mininterval=0.2,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}, {rate_fmt}] {postfix}",
            )
        return self._bar

    def set_total(self, files: int, size: int) -> None:
        with self._lock:
            bar = self._ensure_bar()
            if bar is None:
                return
            self._total_files = files
            bar.total = size
            bar.refresh()

    def advance(self, files: int = 0, size: int = 0) -> None:
        with self._lock:
            bar = self._ensure_bar()
            if bar is None:
                return
            self._files += files
            if size:
                bar.update(size)
            if files:
                total = f"/{self._total_files}" if self._total_files is not None else ""
                bar.set_postfix_str(f"{self._files}{total} files", refresh=False)

    def warning(self, path: str, message: str) -> None:
        with self._lock:
            text = f"costor: warning: {terminal_text(path)}: {terminal_text(message)}"
            if self._bar is not None:
                self._bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
                self._bar = None


class WarningsOnly(Progress):
    """No bar (not a terminal, or --json): warnings still reach stderr as they happen."""

    def warning(self, path: str, message: str) -> None:
        print(f"costor: warning: {terminal_text(path)}: {terminal_text(message)}", file=sys.stderr)


def make_progress(description: str, *, json_output: bool) -> Progress:
    if not json_output and sys.stderr.isatty():
        return BarProgress(description)
    return WarningsOnly()
