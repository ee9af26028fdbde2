"""Profiles are merged in order, then the client's own keys win; tables merge key by
key, arrays and scalars are replaced; diagnostics point into the file a key came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import inventory_helpers

from costor.config import check_inventory, load_inventory
from costor.config.positions import PositionMap
from costor.config.profiles import Profile, merge_client

WriteInventory = Callable[..., Path]
write_inventory = inventory_helpers.write_inventory  # the fixture

REPO = Path(__file__).resolve().parents[2]


def profile(name: str, data: dict[str, Any]) -> Profile:
    return Profile(name, f"{name}.toml", Path(f"/p/{name}.toml"), data, PositionMap({}))


def test_merge_order_tables_recursive_lists_replaced() -> None:
    first = profile("first", {"exclude": ["/a"], "hooks": {"before": ["x"], "timeout_s": 10}})
    second = profile("second", {"exclude": ["/b"], "hooks": {"after": ["y"]}})
    client = {"hooks": {"timeout_s": 20}, "one_file_system": True}

    merged, origins = merge_client(client, [first, second])

    assert merged == {
        "exclude": ["/b"],  # the later profile replaced the list
        "hooks": {"before": ["x"], "timeout_s": 20, "after": ["y"]},  # tables merged
        "one_file_system": True,
    }
    assert origins[("exclude",)] == "second"
    assert origins[("exclude", 0)] == "second"
    assert origins[("hooks", "before")] == "first"
    assert origins[("hooks", "after")] == "second"
    assert origins[("hooks", "timeout_s")] is None  # the client's own key
    assert origins[("one_file_system",)] is None


def test_merge_does_not_modify_the_profiles() -> None:
    shared = profile("shared", {"hooks": {"before": ["x"]}})
    merge_client({"hooks": {"after": ["y"]}}, [shared])
    assert shared.data == {"hooks": {"before": ["x"]}}


def test_client_keys_win_over_profiles(write_inventory: WriteInventory) -> None:
    path = write_inventory(
        """
        [clients.web1]
        site = "hq"
        pool = "main"
        profiles = ["base", "web"]
        paths = ["/srv"]
        exclude = ["*.own"]

        [clients.db1]
        site = "hq"
        pool = "main"
        profiles = ["base", "web"]
        paths = ["/var/lib/db"]
        """,
        profiles={
            "base": 'exclude = ["/proc"]\none_file_system = true\nhooks = { timeout_s = 30 }\n',
            "web": 'exclude = ["/var/www/cache"]\nhooks = { before = ["true"] }\n',
        },
    )
    inventory = load_inventory(path)
    web1, db1 = inventory.clients["web1"], inventory.clients["db1"]
    assert web1.exclude == ("*.own",)
    assert db1.exclude == ("/var/www/cache",)
    assert web1.one_file_system and db1.one_file_system
    assert db1.hooks.timeout_s == 30 and db1.hooks.before == ("true",)
    assert db1.profiles == ("base", "web")


def test_error_from_a_profile_names_the_profile_file_and_line(
    write_inventory: WriteInventory,
) -> None:
    path = write_inventory(
        """
        [clients.web1]
        site = "hq"
        pool = "main"
        profiles = ["base"]
        paths = ["/srv"]
        """,
        profiles={"base": '# comment\n\nhooks = { timeout_s = 0, befor = ["x"] }\n'},
    )
    _, diagnostics = check_inventory(path)
    assert [(Path(d.file).as_posix(), d.line, d.column, d.key) for d in diagnostics] == [
        (str(path.parent / "profiles" / "base.toml"), 3, 11, "clients.web1.hooks.timeout_s"),
        (str(path.parent / "profiles" / "base.toml"), 3, 26, "clients.web1.hooks.befor"),
    ]


def test_first_profile_directory_wins(write_inventory: WriteInventory, tmp_path: Path) -> None:
    (tmp_path / "site-profiles").mkdir()
    (tmp_path / "site-profiles" / "base.toml").write_text("one_file_system = true\n")
    path = write_inventory(
        """
        [costor]
        profile_paths = ["site-profiles", "profiles"]

        [clients.web1]
        site = "hq"
        pool = "main"
        profiles = ["base"]
        paths = ["/srv"]
        """,
        profiles={"base": "one_file_system = false\n"},
    )
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None
    assert inventory.clients["web1"].one_file_system is True
    assert [d.severity for d in diagnostics] == ["warning"]
    assert "hidden by" in diagnostics[0].message


def test_a_missing_explicit_profile_directory_is_an_error(write_inventory: WriteInventory) -> None:
    path = write_inventory('[costor]\nprofile_paths = ["nowhere"]\n')
    _, diagnostics = check_inventory(path)
    assert [(d.key, d.line) for d in diagnostics] == [("costor.profile_paths[0]", 9)]
    assert "does not exist" in diagnostics[0].message


def test_shipped_linux_server_profile(write_inventory: WriteInventory, tmp_path: Path) -> None:
    path = write_inventory(
        """
        [costor]
        profile_paths = ["%s"]

        [clients.web1]
        site = "hq"
        pool = "main"
        profiles = ["linux-server"]
        paths = ["/"]
        """
        % (REPO / "profiles")
    )
    client = load_inventory(path).clients["web1"]
    assert client.one_file_system is True
    assert {"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "*.swp"} <= set(client.exclude)
