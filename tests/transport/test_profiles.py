"""The shipped database profiles (profiles/postgresql.toml, profiles/mysql.toml), for
real, combined with linux-server as docs/ssh.md recommends: a host reached over sshd
dumps this machine's running PostgreSQL and MariaDB in its before hook, and the dump is
in the snapshot (the profile adds its directory to the client's paths). Skipped where a
server is absent."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.fixtures import Site
from support.inventory import local_pool, site_table, ssh_client, write_tables
from support.sshd import Sshd, sshd  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
DUMPS = Path("/var/backups/costor")


def profile_site(root: Path, sshd: Sshd, profile: str) -> Site:  # noqa: F811
    shutil.copytree(REPO / "profiles", root / "profiles")
    write_tables(
        root,
        site_table(),
        local_pool(pack_size_mib=None),
        ssh_client("db", sshd, ["/etc/hostname"], profiles=["linux-server", profile]),
    )
    return Site(root, root / "inventory.toml", root / "pool")


@pytest.mark.parametrize(
    "profile, probe, dump, marker",
    [
        (
            "postgresql",
            ["su", "postgres", "-s", "/bin/sh", "-c", "psql -Atc 'select 1'"],
            "postgresql.sql",
            "PostgreSQL database cluster dump complete",
        ),
        ("mysql", ["mariadb", "-N", "-e", "select 1"], "mysql.sql", "Dump completed"),
    ],
)
def test_database_profile_dumps_before_the_backup(
    sshd: Sshd,  # noqa: F811
    tmp_path: Path,
    profile: str,
    probe: list[str],
    dump: str,
    marker: str,
) -> None:
    try:
        running = subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        running = False
    if not running:
        pytest.skip(f"no running server for the {profile} profile on this machine")
    site = profile_site(tmp_path, sshd, profile)
    try:
        assert site.cli("apply", "--auto-approve").code == 0
        backup = site.cli("backup", "db", "--json")
        assert backup.code == 0, backup.stderr
        assert [h["rc"] for h in backup.json()["hooks"]] == [0]
        restored = site.cli("restore", "db:latest", "--target", str(tmp_path / "r"))
        assert restored.code == 0, restored.stderr
        text = (tmp_path / "r" / str(DUMPS).lstrip("/") / dump).read_text()
        assert marker in text
        assert (tmp_path / "r" / "etc" / "hostname").is_file()  # the client's own path
    finally:
        (DUMPS / dump).unlink(missing_ok=True)
