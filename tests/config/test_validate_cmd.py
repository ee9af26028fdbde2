"""``costor validate``, driven through its verb module (the other verbs may not exist yet)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from costor.cli import validate_cmd

WriteInventory = Callable[..., Path]


def run_validate(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="costor")
    subparsers = parser.add_subparsers(dest="verb", required=True)
    validate_cmd.add_parser(subparsers)
    return validate_cmd.run(parser.parse_args(["validate", *argv]))


def test_valid_inventory_human(
    write_inventory: WriteInventory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_inventory('[clients.web1]\nsite = "hq"\npool = "main"\npaths = ["/srv"]\n')
    assert run_validate("-c", str(path)) == 0
    out, err = capsys.readouterr()
    assert out == f"costor: {path} is valid (1 pool, 1 client)\n"
    assert err == ""


def test_invalid_inventory_human(
    write_inventory: WriteInventory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_inventory('[clients.web1]\nsite = "hq"\npool = "nope"\n')
    assert run_validate("-c", str(path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:8:1: clients.web1.paths: missing required key 'paths' (a client backs up at least one path or image)",
        f"{path}:10:1: clients.web1.pool: unknown pool 'nope' (declared: main)",
        f"costor: error: {path} has 2 error(s)",
    ]


def test_json_output(write_inventory: WriteInventory, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_inventory('[clients.web1]\nsite = "hq"\npool = "main"\npaths = ["srv"]\n')
    assert run_validate("-c", str(path), "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document == {
        "valid": False,
        "error_count": 1,
        "diagnostics": [
            {
                "file": str(path),
                "line": 11,
                "column": 10,
                "key": "clients.web1.paths[0]",
                "message": "must be an absolute path, got 'srv'",
                "severity": "error",
            }
        ],
    }

    path = write_inventory("")
    assert run_validate("-c", str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "valid": True,
        "error_count": 0,
        "diagnostics": [],
    }


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert run_validate("-c", str(missing), "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["error_count"] == 1
    assert document["diagnostics"][0]["message"] == "file not found"


def test_inventory_from_environment(
    write_inventory: WriteInventory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_inventory("")
    monkeypatch.setenv("COSTOR_INVENTORY", str(path))
    assert run_validate() == 0
    assert "is valid (1 pool, 0 clients)" in capsys.readouterr().out


def test_through_the_costor_entry_point(
    write_inventory: WriteInventory, capsys: pytest.CaptureFixture[str]
) -> None:
    from costor.cli.main import main

    path = write_inventory("")
    assert main(["validate", "-c", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
