"""The one builder of test inventories: the tables tests compose, and the writers.

Every test writes its inventory through here. An inventory is text: the ``[costor]`` table
(:func:`costor_table`), then site, pool and client tables joined by :func:`write_tables`.

PostgreSQL runs (``COSTOR_TEST_DATABASE`` set; ``scripts/test.sh`` runs the whole suite a
second time that way): every call of :func:`costor_table` creates a new, empty database.
A test that rewrites an inventory must keep its ``[costor]`` table — so its state — and
does so with :func:`rewrite_tables` (or by editing the file's text), never by calling
:func:`costor_table` again.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

PASSPHRASE = "correct horse battery staple"
PASSPHRASE_ENV = "COSTOR_TEST_PASSPHRASE"

# e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a database to connect to
# while creating the per-test ones); unset: SQLite in each inventory's state_dir.
TEST_DATABASE = os.environ.get("COSTOR_TEST_DATABASE", "")
_created_databases: list[str] = []


def _admin_dsn() -> str:
    return TEST_DATABASE.replace("postgresql+psycopg://", "postgresql://", 1)


def fresh_database_url() -> str | None:
    """A new, empty PostgreSQL database for one inventory, or None on SQLite."""
    if not TEST_DATABASE:
        return None
    import psycopg

    name = f"costor_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    _created_databases.append(name)
    return TEST_DATABASE.rsplit("/", 1)[0] + "/" + name


def recreate_database(url: str) -> None:
    """Drop and create again the database of ``url`` (the state is lost)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_admin_dsn(), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    # COSTOR_TEST_DATABASE_DISPOSABLE=1: the server is scripts/test.sh's throwaway cluster,
    # removed whole afterwards (dropping hundreds of databases one by one costs a
    # checkpoint each).
    if not _created_databases or os.environ.get("COSTOR_TEST_DATABASE_DISPOSABLE") == "1":
        return
    import psycopg

    with psycopg.connect(_admin_dsn(), autocommit=True) as connection:
        for name in _created_databases:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- tables ---------------------------------------------------------------------------


def costor_table(*lines: str) -> str:
    """The ``[costor]`` table of a test inventory: state_dir, and the test database
    (on PostgreSQL runs a new one: call once per inventory, see the module's note)."""
    url = fresh_database_url()
    body = ["[costor]", 'state_dir = ".costor"', *lines]
    if url:
        body.append(f"database = {json.dumps(url)}")
    return "\n".join(body) + "\n"


def toml_list(items: Iterable[object]) -> str:
    """``["a", "b"]``: strings (or paths) as a TOML array."""
    return "[" + ", ".join(json.dumps(str(item)) for item in items) + "]"


def site_table(name: str = "hq", *extra: str) -> str:
    """A site; ``extra``: lines of its table (``maintenance = true``)."""
    return "\n".join([f"[sites.{name}]", *extra]) + "\n"


def local_pool(
    name: str = "main",
    *extra: str,
    site: str = "hq",
    path: str = "pool",
    passphrase_env: str = PASSPHRASE_ENV,
    pack_size_mib: int | None = 4,
) -> str:
    """A ``backend = "local"`` pool; ``extra``: more lines of its table."""
    lines = [
        f"[pools.{name}]",
        f'site = "{site}"',
        'backend = "local"',
        f"path = {json.dumps(path)}",
        f"passphrase = {env_secret(passphrase_env)}",
    ]
    if pack_size_mib is not None:
        lines.append(f"pack_size_mib = {pack_size_mib}")
    return "\n".join([*lines, *extra]) + "\n"


def env_secret(name: str) -> str:
    """A secret's TOML value read from the environment variable ``name``."""
    return f'{{ env = "{name}" }}'


def file_secret(name: str) -> str:
    """A secret's TOML value read from the file ``name`` (next to the inventory)."""
    return f'{{ file = "{name}" }}'


def s3_pool(
    name: str,
    endpoint: str,
    bucket: str,
    *extra: str,
    prefix: str | None = "costor",
    site: str = "hq",
    access_key: str = env_secret("TEST_S3_ACCESS_KEY"),
    secret_key: str = env_secret("TEST_S3_SECRET_KEY"),
    passphrase_env: str = PASSPHRASE_ENV,
) -> str:
    """A ``backend = "s3"`` pool on a test S3 server (support/s3servers.py: path-style, its
    region); ``prefix=None``: no prefix key; ``extra``: more lines of its table."""
    from support.s3servers import REGION

    lines = [
        f"[pools.{name}]",
        f'site = "{site}"',
        'backend = "s3"',
        f'bucket = "{bucket}"',
        *([f'prefix = "{prefix}"'] if prefix is not None else []),
        f'endpoint = "{endpoint}"',
        f'region = "{REGION}"',
        "path_style = true",
        f"access_key = {access_key}",
        f"secret_key = {secret_key}",
        f"passphrase = {env_secret(passphrase_env)}",
    ]
    return "\n".join([*lines, *extra]) + "\n"


def client_table(
    name: str,
    paths: Iterable[object],
    *extra: str,
    site: str = "hq",
    pool: str = "main",
    transport: str | None = "local",
    profiles: Iterable[str] | None = None,
    connection: Iterable[str] = (),
) -> str:
    """A client backing up ``paths``; ``transport=None``: no transport key (the config
    tests'); ``connection``: lines before ``paths`` (how to reach the host); ``extra``:
    more lines of its table."""
    lines = [f"[clients.{name}]", f'site = "{site}"', f'pool = "{pool}"']
    if transport is not None:
        lines.append(f'transport = "{transport}"')
    if profiles is not None:
        lines.append(f"profiles = {toml_list(profiles)}")
    return "\n".join([*lines, *connection, f"paths = {toml_list(paths)}", *extra]) + "\n"


def ssh_client(
    name: str,
    sshd: Any,
    paths: Iterable[object],
    *extra: str,
    user: str = "root",
    host: str = "127.0.0.1",
    port: int | None = None,
    ssh_extra: str = "",
    pool: str = "main",
    profiles: Iterable[str] | None = None,
) -> str:
    """A client pulled over SSH from the test sshd (support/sshd.py) with its client key;
    ``ssh_extra``: more keys of the ``ssh`` table (``, sudo = true``)."""
    ssh = (
        f'ssh = {{ user = "{user}", port = {port or sshd.port}, '
        f'key = {{ file = "{sshd.client_key}" }}{ssh_extra} }}'
    )
    return client_table(
        name,
        paths,
        *extra,
        pool=pool,
        transport="ssh",
        profiles=profiles,
        connection=[f'host = "{host}"', ssh],
    )


# The site and pool every test inventory starts from (pool "main", local, in ./pool).
BASE_TABLES = (site_table(), local_pool())


# --- writers --------------------------------------------------------------------------


def inventory_text(*tables: str, costor: str | None = None) -> str:
    """``[costor]`` (a new one unless given) and the tables, one blank line apart."""
    parts = [costor if costor is not None else costor_table(), *tables]
    return "\n".join(textwrap.dedent(part).strip("\n") + "\n" for part in parts)


def write_tables(root: Path, *tables: str, costor: str | None = None) -> Path:
    """Write ``root/inventory.toml``: ``[costor]`` then ``tables``; returns its path."""
    inventory = root / "inventory.toml"
    inventory.write_text(inventory_text(*tables, costor=costor))
    return inventory


def costor_of(inventory: Path) -> str:
    """The ``[costor]`` table an inventory file has (up to the next table)."""
    lines: list[str] = []
    for line in inventory.read_text().splitlines():
        if line.startswith("[") and lines:
            break
        if line.startswith("[costor]") or lines:
            lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def rewrite_tables(inventory: Path, *tables: str) -> Path:
    """Write ``inventory`` again with other tables but the same ``[costor]`` table (so the
    same state database: see the module's note)."""
    inventory.write_text(inventory_text(*tables, costor=costor_of(inventory)))
    return inventory


def local_tables(
    clients: dict[str, list[Path]],
    *,
    extra_pool: str = "",
    excludes: dict[str, list[str]] | None = None,
) -> list[str]:
    """The base site and pool (``extra_pool``: more lines for pool "main") and local
    clients ``{name: paths}`` (``excludes``: ``{name: patterns}``)."""
    tables = [site_table(), local_pool("main", textwrap.dedent(extra_pool).strip("\n"))]
    for name, paths in clients.items():
        extra = []
        if excludes and name in excludes:
            extra.append(f"exclude = {toml_list(excludes[name])}")
        tables.append(client_table(name, paths, *extra))
    return tables


def write_local_inventory(
    root: Path,
    clients: dict[str, list[Path]],
    *,
    extra_pool: str = "",
    excludes: dict[str, list[str]] | None = None,
) -> Path:
    """``root/inventory.toml``: a new ``[costor]`` table and :func:`local_tables`."""
    return write_tables(root, *local_tables(clients, extra_pool=extra_pool, excludes=excludes))


def cut_at(inventory: Path, table: str, then: str = "") -> None:
    """Drop ``table`` (e.g. ``"[pools.main]"``) and everything after it, keeping the
    ``[costor]`` table and the tables before; then append ``then``."""
    text = inventory.read_text()
    inventory.write_text(text[: text.index(table)] + then)


# The config tests' base: site "hq" and pool "main", no [costor] table of their own.
BASE_INVENTORY = site_table() + "\n" + local_pool(pack_size_mib=None)


@pytest.fixture
def write_inventory(tmp_path: Path) -> Callable[..., Path]:
    """``write_inventory(text, profiles={"name": text})`` -> path of inventory.toml: the
    base site and pool (no ``[costor]`` table: the config tests write their own), then
    ``text``; profiles in ./profiles."""

    def write_config(text: str, profiles: dict[str, str] | None = None) -> Path:
        inventory = tmp_path / "inventory.toml"
        inventory.write_text(BASE_INVENTORY + textwrap.dedent(text))
        for name, body in (profiles or {}).items():
            (tmp_path / "profiles").mkdir(exist_ok=True)
            (tmp_path / "profiles" / f"{name}.toml").write_text(textwrap.dedent(body))
        return inventory

    return write_config
