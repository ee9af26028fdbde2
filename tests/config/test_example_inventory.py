"""``inventory.example.toml`` validates, and so does every key it shows commented out."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from costor.config import check_inventory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory.example.toml"


def test_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTOR_POOL_PASSPHRASE", "example")
    inventory, diagnostics = check_inventory(EXAMPLE)
    assert diagnostics == []
    assert inventory is not None
    assert list(inventory.pools) == ["local"] and list(inventory.clients) == ["demo"]
    assert all(Path(p).is_dir() for p in inventory.clients["demo"].paths)


def test_example_needs_the_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COSTOR_POOL_PASSPHRASE", raising=False)
    _, diagnostics = check_inventory(EXAMPLE)
    assert [d.key for d in diagnostics] == ["pools.local.passphrase"]


def test_commented_out_keys_are_valid_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncomment every example key: the whole example is valid."""
    monkeypatch.setenv("COSTOR_POOL_PASSPHRASE", "example")
    for name in ("COSTOR_S3_PASSPHRASE", "ALICE_PASSWORD", "S3_ACCESS_KEY"):
        monkeypatch.setenv(name, "example")
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        uncommented = re.sub(r"^# ((\[|[a-z_]+ =).*)$", r"\1", line)
        if "postgresql" not in uncommented:  # one of two alternative `database` lines
            lines.append(uncommented)
    (tmp_path / "inventory.toml").write_text("\n".join(lines) + "\n")
    shutil.copytree(REPO / "costor" / "profiles", tmp_path / "profiles")

    _, diagnostics = check_inventory(tmp_path / "inventory.toml", resolve_secrets=False)

    assert [(d.key, d.message) for d in diagnostics] == []
