"""Helpers for the config tests: write an inventory (and profiles) into a temp dir.

Not a conftest.py: other test packages import their root ``conftest`` by name, and a
second module of that name here would shadow it. Test modules bind the fixture with
``write_inventory = inventory_helpers.write_inventory``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

# A valid inventory the tests extend; its pool's passphrase comes from COSTOR_TEST_PASSPHRASE.
BASE_INVENTORY = """\
[sites.hq]

[pools.main]
site = "hq"
backend = "local"
path = "pool"
passphrase = { env = "COSTOR_TEST_PASSPHRASE" }
"""


@pytest.fixture
def write_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``write_inventory(text, profiles={"name": text})`` -> path of inventory.toml."""
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "correct horse battery staple")

    def write(text: str, profiles: dict[str, str] | None = None) -> Path:
        inventory = tmp_path / "inventory.toml"
        inventory.write_text(BASE_INVENTORY + textwrap.dedent(text))
        for name, body in (profiles or {}).items():
            (tmp_path / "profiles").mkdir(exist_ok=True)
            (tmp_path / "profiles" / f"{name}.toml").write_text(textwrap.dedent(body))
        return inventory

    return write
