"""Profiles are merged in order, then the client's own keys: tables merge key by key,
scalars are replaced, arrays are concatenated ("!X" removes an inherited X); diagnostics
point into the file a key or an array element came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.inventory import client_table

from costor.config import check_inventory, load_inventory
from costor.config.positions import PositionMap
from costor.config.profiles import SHIPPED_PROFILES, MergeProblem, Profile, merge_client

WriteInventory = Callable[..., Path]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "costor" / "profiles"  # package data: installed with CoStor
SHIPPED_PATHS = f'[costor]\nprofile_paths = ["{SHIPPED}"]\n'


def profiled(name: str, profiles: list[str], paths: list[str], *extra: str) -> str:
    """A client of the base pool with ``profiles`` (no transport key, as written by hand)."""
    return client_table(name, paths, *extra, transport=None, profiles=profiles)


def clients(*tables: str) -> str:
    """What write_inventory appends to the base tables: a blank line, then ``tables``."""
    return "\n" + "\n".join(tables)


def profile(name: str, data: dict[str, Any]) -> Profile:
    return Profile(name, f"{name}.toml", Path(f"/p/{name}.toml"), data, PositionMap({}))


def test_merge_order_tables_recursive_lists_composed() -> None:
    first = profile("first", {"exclude": ["/a"], "hooks": {"before": ["x"], "timeout_s": 10}})
    second = profile("second", {"exclude": ["/b", "/a"], "hooks": {"after": ["y"]}})
    client = {"hooks": {"timeout_s": 20, "before": ["z"]}, "one_file_system": True}

    merged, origins = merge_client(client, [first, second])

    assert merged == {
        "exclude": ["/a", "/b"],  # concatenated in order, the repeated "/a" kept once
        "hooks": {"before": ["x", "z"], "timeout_s": 20, "after": ["y"]},  # tables merged
        "one_file_system": True,
    }
    assert origins[("exclude",)] == "second"  # the array's latest writer
    assert origins[("exclude", 0)] == "first"
    assert origins[("exclude", 1)] == "second"
    assert origins[("hooks", "before", 0)] == "first"
    assert origins[("hooks", "before", 1)] is None  # the client's own entry
    assert origins[("hooks", "after")] == "second"
    assert origins[("hooks", "timeout_s")] is None  # the client's own key
    assert origins[("one_file_system",)] is None
    # where each element is in the file that wrote it
    assert origins.source_path(("exclude", 0)) == ("exclude", 0)
    assert origins.source_path(("exclude", 1)) == ("exclude", 0)
    assert origins.source_path(("hooks", "before", 1)) == ("hooks", "before", 0)


def test_a_bang_entry_removes_an_inherited_one() -> None:
    base = profile("base", {"exclude": ["/tmp", "/var/tmp", "*.swp"], "paths": ["/etc"]})
    db = profile("db", {"exclude": ["/var/lib/db", "!*.swp"]})
    problems: list[MergeProblem] = []

    merged, origins = merge_client(
        {"exclude": ["!/var/tmp", "*.tmp", "!/var/tmpp"], "paths": ["!", "/srv"]},
        [base, db],
        problems,
    )

    assert merged == {"exclude": ["/tmp", "/var/lib/db", "*.tmp"], "paths": ["/srv"]}
    assert origins.source_path(("exclude", 2)) == ("exclude", 1)
    assert [(p.origin, p.path, p.severity) for p in problems] == [(None, ("exclude", 2), "warning")]
    assert "'!/var/tmpp' removes nothing" in problems[0].message


def test_images_compose_and_a_table_entry_is_removed_by_its_path() -> None:
    snap = {"path": "/dev/vg0/root-snap", "changes": "thin_delta", "previous": "/dev/vg0/p"}
    base = profile("vm-host", {"images": [snap, "/var/lib/libvirt/images/a.img"]})

    merged, origins = merge_client(
        {"images": ["!/dev/vg0/root-snap", "/dev/sdb", "/var/lib/libvirt/images/a.img"]}, [base]
    )

    assert merged == {"images": ["/var/lib/libvirt/images/a.img", "/dev/sdb"]}
    assert origins.source_path(("images", 0)) == ("images", 1)  # where vm-host wrote it


def test_bang_escapes_and_shell_negation() -> None:
    merged, _ = merge_client(
        {"exclude": ["\\!important"], "hooks": {"before": ["! test -e /stop", "true"]}},
        [profile("base", {"hooks": {"before": ["true"]}})],
    )
    assert merged == {
        "exclude": ["!important"],  # \! is a literal "!"
        "hooks": {"before": ["true", "! test -e /stop"]},  # "! " is the shell's negation
    }


def test_the_profiles_key_is_not_composed() -> None:
    merged, _ = merge_client({"profiles": ["a", "a"]}, [profile("a", {})])
    assert merged == {"profiles": ["a", "a"]}  # pydantic or the loader judge it as written


def test_merge_does_not_modify_the_profiles() -> None:
    shared = profile("shared", {"hooks": {"before": ["x"]}})
    merge_client({"hooks": {"after": ["y"]}}, [shared])
    assert shared.data == {"hooks": {"before": ["x"]}}


def test_client_keys_win_over_profiles(write_inventory: WriteInventory) -> None:
    path = write_inventory(
        clients(
            profiled("web1", ["base", "web"], ["/srv"], 'exclude = ["*.own"]'),
            profiled("db1", ["base", "web"], ["/var/lib/db"]),
        ),
        profiles={
            "base": 'exclude = ["/proc"]\none_file_system = true\nhooks = { timeout_s = 30 }\n',
            "web": 'exclude = ["/var/www/cache"]\nhooks = { before = ["true"] }\n',
        },
    )
    inventory = load_inventory(path)
    web1, db1 = inventory.clients["web1"], inventory.clients["db1"]
    assert web1.exclude == ("/proc", "/var/www/cache", "*.own")
    assert db1.exclude == ("/proc", "/var/www/cache")
    assert web1.one_file_system and db1.one_file_system
    assert db1.hooks.timeout_s == 30 and db1.hooks.before == ("true",)
    assert db1.profiles == ("base", "web")


def test_error_from_a_profile_names_the_profile_file_and_line(
    write_inventory: WriteInventory,
) -> None:
    path = write_inventory(
        clients(profiled("web1", ["base"], ["/srv"])),
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
        clients(
            '[costor]\nprofile_paths = ["site-profiles", "profiles"]\n',
            profiled("web1", ["base"], ["/srv"]),
        ),
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
    path = write_inventory(clients(SHIPPED_PATHS, profiled("web1", ["linux-server"], ["/"])))
    client = load_inventory(path).clients["web1"]
    assert client.one_file_system is True
    assert {"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "*.swp"} <= set(client.exclude)


def test_shipped_profiles_are_found_without_a_profiles_directory(
    write_inventory: WriteInventory, tmp_path: Path
) -> None:
    """An installed CoStor has linux-server, postgresql and mysql: searched after the
    inventory's own directories, with nothing copied next to the inventory."""
    assert SHIPPED_PROFILES.resolve() == SHIPPED.resolve()
    path = write_inventory(clients(profiled("web1", ["linux-server", "postgresql"], ["/"])))
    assert not (tmp_path / "profiles").exists()
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None and diagnostics == []
    client = inventory.clients["web1"]
    assert client.one_file_system is True
    assert "/proc" in client.exclude and "/var/backups/costor" in client.paths


def test_a_profile_of_the_same_name_replaces_the_shipped_one(
    write_inventory: WriteInventory,
) -> None:
    path = write_inventory(
        clients(profiled("web1", ["linux-server"], ["/"])),
        profiles={"linux-server": 'exclude = ["/mine"]\n'},
    )
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None and diagnostics == []  # replaced without a warning
    client = inventory.clients["web1"]
    assert client.exclude == ("/mine",) and client.one_file_system is False


def test_an_unknown_profile_names_where_it_was_looked_for(
    write_inventory: WriteInventory, tmp_path: Path
) -> None:
    path = write_inventory(clients(profiled("web1", ["nosuch"], ["/"])))
    _, diagnostics = check_inventory(path)
    assert [d.message for d in diagnostics] == [
        f"unknown profile 'nosuch' (no nosuch.toml in {tmp_path / 'profiles'}, nor among "
        "the profiles shipped with CoStor)"
    ]


SHIPPED_EXCLUDES = {"/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/cache/apt/archives"}


@pytest.mark.parametrize(
    "database, data_dir, dump",
    [
        ("postgresql", "/var/lib/postgresql", "pg_dumpall"),
        ("mysql", "/var/lib/mysql", "mysqldump"),
    ],
)
def test_shipped_profiles_compose(
    write_inventory: WriteInventory, database: str, data_dir: str, dump: str
) -> None:
    """docs/ssh.md recommends ``profiles = ["linux-server", DATABASE]``: both profiles'
    excludes apply, the database's hook runs, and the client adds its own."""
    composed = ["linux-server", database]
    path = write_inventory(
        clients(
            SHIPPED_PATHS,
            profiled(
                "db1", composed, ["/etc"], 'exclude = ["*.tmp"]', 'hooks = { before = ["sync"] }'
            ),
            profiled("db2", composed, ["/"], 'exclude = ["!/var/tmp"]'),
        )
    )
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None and diagnostics == []
    db1, db2 = inventory.clients["db1"], inventory.clients["db2"]
    assert SHIPPED_EXCLUDES | {data_dir} <= set(db1.exclude)
    assert db1.exclude[-2:] == (data_dir, "*.tmp")  # linux-server's, the database's, own
    assert db1.one_file_system is True
    assert len(db1.hooks.before) == 2 and dump in db1.hooks.before[0]
    assert db1.hooks.before[1] == "sync"
    assert db1.hooks.timeout_s == 3600
    # the dump's directory comes with the profile
    assert set(db1.paths) == {"/etc", "/var/backups/costor"}
    assert "/var/tmp" not in db2.exclude
    assert (SHIPPED_EXCLUDES - {"/var/tmp"}) | {data_dir} <= set(db2.exclude)


def test_errors_in_composed_arrays_point_at_the_entry_that_wrote_them(
    write_inventory: WriteInventory,
) -> None:
    path = write_inventory(
        clients(profiled("web1", ["base", "web"], ["/srv"], 'hooks = { before = ["true", ""] }')),
        profiles={
            "base": 'exclude = ["/proc", "/sys"]\nhooks = { before = ["sync"] }\n',
            "web": '# the web profile\nexclude = ["/var/www/cache", ""]\n',
        },
    )
    _, diagnostics = check_inventory(path)
    web = str(path.parent / "profiles" / "web.toml")
    # merged: exclude = /proc /sys /var/www/cache "", hooks.before = sync true ""
    assert [(Path(d.file).as_posix(), d.line, d.column, d.key) for d in diagnostics] == [
        (str(path), 14, 29, "clients.web1.hooks.before[2]"),
        (web, 2, 30, "clients.web1.exclude[3]"),
    ]


def test_a_removal_that_removes_nothing_is_a_warning(write_inventory: WriteInventory) -> None:
    path = write_inventory(
        clients(profiled("web1", ["base"], ["/srv"], 'exclude = ["!/var/tmpp"]')),
        profiles={"base": 'exclude = ["/var/tmp"]\n'},
    )
    inventory, diagnostics = check_inventory(path)
    assert inventory is not None
    assert inventory.clients["web1"].exclude == ("/var/tmp",)
    assert [(d.severity, d.line, d.column, d.key) for d in diagnostics] == [
        ("warning", 14, 12, "clients.web1.exclude[0]")
    ]
    assert "removes nothing" in diagnostics[0].message
