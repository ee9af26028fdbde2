"""Validation cases as data: ``cases/NAME/inventory.toml`` (+ ``profiles/``) and
``expected.json``, the complete list of diagnostics in the order they are reported.

Each expected diagnostic gives the file's base name, line, column, key and a substring of
the message (``severity`` defaults to "error"). An empty list means the inventory is
valid. A new bug in validation becomes a new directory here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from costor.config import check_inventory

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(path.name for path in CASES_DIR.iterdir() if path.is_dir())


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cases refer to this variable wherever a secret must be available.
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "correct horse battery staple")
    monkeypatch.delenv("COSTOR_TEST_SURELY_UNSET_VARIABLE", raising=False)


@pytest.mark.parametrize("case", CASES)
def test_case(case: str) -> None:
    case_dir = CASES_DIR / case
    expected = json.loads((case_dir / "expected.json").read_text())

    inventory, diagnostics = check_inventory(case_dir / "inventory.toml")

    actual: list[dict[str, Any]] = [
        {
            "file": os.path.basename(d.file),
            "line": d.line,
            "column": d.column,
            "key": d.key,
            "message": d.message,
            "severity": d.severity,
        }
        for d in diagnostics
    ]
    assert len(actual) == len(expected), "\n".join(str(d) for d in diagnostics)
    for got, want in zip(actual, expected, strict=True):
        assert want["message"] in got["message"], (got, want)
        want_exact = {k: v for k, v in want.items() if k != "message"}
        want_exact.setdefault("severity", "error")
        assert {k: got[k] for k in want_exact} == want_exact, (got, want)
    has_errors = any(d.severity == "error" for d in diagnostics)
    assert (inventory is None) == has_errors


def test_every_case_has_expectations() -> None:
    for case in CASES:
        assert (CASES_DIR / case / "expected.json").is_file(), case
