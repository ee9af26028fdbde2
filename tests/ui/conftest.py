"""The browser tests (e2e.py says what they need): skipped with the reason where
Debian's chromium or axe-core is missing, except under CI (``CI=true``), where the
missing tool fails them instead: CI must never pass by not looking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e import chromium, e2e_site, missing_tools, open_ui, served, ui  # noqa: F401  (fixtures)

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives Debian's chromium against a real costor serve (tests/ui)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_tools()
    if missing is None or os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.skip(reason=f"browser tests: {missing}"))
