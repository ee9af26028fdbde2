"""Shared fixtures and helpers: real local pools, real inventories, the real CLI.

Tests mirror the package tree (tests/store ↔ costor/store). Nothing is mocked: pools live
on the real filesystem, the state database is a real SQLite file — or, when
``COSTOR_TEST_DATABASE`` names a PostgreSQL server (``scripts/test.sh`` runs the whole
suite a second time that way), a fresh real PostgreSQL database per inventory (see
support/inventory.py) — and the CLI runs either in-process (``Site.cli``) or as a separate
``costor`` process (``Site.run_process``) where kill -9, concurrency or exit codes of a
real process matter.

Registered for every test by tests/conftest.py (``pytest_plugins``); test modules import
the helpers (``Site``, ``tree_digest``, ``make_pool`` …) from here.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from costor.cli.main import main
from costor.store import crypto
from costor.store.backends import LocalBackend
from costor.store.pool import Pool
from support.inventory import (
    PASSPHRASE,
    PASSPHRASE_ENV,
    fresh_database_url,
    recreate_database,
    write_local_inventory,
)

__all__ = [
    "PASSPHRASE",
    "CliResult",
    "Site",
    "appending",
    "make_pool",
    "open_pool",
    "run_in_pty",
    "tree_digest",
]


# Verbs whose subcommand takes the options (`costor pool copy -c FILE …`).
ACTION_VERBS = ("pool", "db", "hostkey", "token")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Site:
    """A temporary inventory with one pool and clients backed by local directories."""

    root: Path
    inventory: Path
    pool_path: Path

    @property
    def database_url(self) -> str:
        from costor.config.applied import load_settings

        # [costor] alone: found even while a test has broken the rest of the file.
        return load_settings(self.inventory).database_url

    def lose_state(self) -> None:
        """The state database is gone (deleted file, or a dropped database)."""
        url = self.database_url
        if url.startswith("sqlite:///"):
            database = Path(url.removeprefix("sqlite:///"))
            for file in database.parent.glob(database.name + "*"):
                file.unlink()
        else:
            recreate_database(url)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run one SQL statement on the state database (as another tool would)."""
        from sqlalchemy import create_engine, text

        url = self.database_url
        engine = create_engine(url)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def cli(self, *args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        verb, rest = args[0], list(args[1:])
        argv = [verb]
        if verb in ACTION_VERBS:  # verbs with an action: the action comes first
            argv, rest = [verb, rest[0]], rest[1:]
        argv += ["-c", str(self.inventory), *rest]
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        return CliResult(code, out.getvalue(), err.getvalue())

    def process(
        self, *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        verb, rest = args[0], list(args[1:])
        argv = [verb]
        if verb in ACTION_VERBS:
            argv, rest = [verb, rest[0]], rest[1:]
        argv += ["-c", str(self.inventory), *rest]
        full_env = {**os.environ, **(env or {})}
        return subprocess.Popen(
            [sys.executable, "-m", "costor", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            **kwargs,
        )

    def run_process(
        self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
    ) -> CliResult:
        proc = self.process(*args, env=env)
        out, err = proc.communicate(timeout=timeout)
        return CliResult(proc.returncode, out.decode(), err.decode())


@pytest.fixture(autouse=True)
def _passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)


# Key slots made in the test process derive their key cheaply (argon2id 8 MiB, 1 pass,
# 1 lane; scrypt n=2^10): the product's parameters cost ~0.2 s per opening of a pool and
# the suite opens pools thousands of times, in this process and in the ``costor``
# processes, servers and daemons it starts (a slot carries its parameters, so they open
# it cheaply too). Nothing else changes: same KDFs, same slot format, same checks. Tests
# of the KDF itself (its cost, its lock) and one round trip per KDF keep the product's
# parameters with ``@pytest.mark.product_kdf``; ``COSTOR_TEST_PRODUCT_KDF=1`` gives every
# test the product's parameters.
PRODUCT_KDF_PARAMS = (dict(crypto.ARGON2_PARAMS), dict(crypto.SCRYPT_PARAMS))
TEST_KDF_PARAMS = (
    {"iterations": 1, "lanes": 1, "memory_cost_kib": 8192},
    {"n": 1 << 10, "r": 8, "p": 1},
)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("COSTOR_TEST_PRODUCT_KDF") == "1":
        return
    crypto.ARGON2_PARAMS, crypto.SCRYPT_PARAMS = (dict(p) for p in TEST_KDF_PARAMS)


@pytest.fixture(autouse=True)
def _product_kdf(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("product_kdf") is not None:
        argon2, scrypt = PRODUCT_KDF_PARAMS
        monkeypatch.setattr(crypto, "ARGON2_PARAMS", dict(argon2))
        monkeypatch.setattr(crypto, "SCRYPT_PARAMS", dict(scrypt))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A small source tree with text, binary, nested and empty content."""
    src = tmp_path / "src"
    (src / "docs" / "deep" / "er").mkdir(parents=True)
    (src / "docs" / "readme.txt").write_text("hello costor\n" * 100)
    (src / "docs" / "deep" / "er" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "empty").write_bytes(b"")
    (src / "emptydir").mkdir()
    return src


@pytest.fixture
def site(tmp_path: Path, source: Path) -> Site:
    inventory = write_local_inventory(tmp_path, {"alpha": [source]})
    return Site(tmp_path, inventory, tmp_path / "pool")


@pytest.fixture
def applied(site: Site) -> Site:
    result = site.cli("apply", "--auto-approve")
    assert result.code == 0, result.stderr
    return site


def make_pool(path: Path, **kwargs: Any) -> Pool:
    kwargs.setdefault("passphrase", PASSPHRASE)
    kwargs.setdefault("pack_size", 4 * 1024 * 1024)
    return Pool.init(LocalBackend(path), **kwargs)


def open_pool(path: Path) -> Pool:
    pool = Pool.open(LocalBackend(path), PASSPHRASE)
    pool.load_index()
    return pool


def tree_digest(root: Path) -> dict[str, Any]:
    """Everything a restore must reproduce, per relative path."""
    result: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, os.fsencode(root))
            st = os.lstat(full)
            entry: dict[str, Any] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if not os.path.isdir(full) or os.path.islink(full):
                entry["mtime_ns"] = st.st_mtime_ns
            if os.path.islink(full):
                entry["target"] = os.readlink(full)
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    entry["content"] = handle.read()
            result[os.fsdecode(rel)] = entry
    return result


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    """A new, empty state database: PostgreSQL in the PostgreSQL pass, else SQLite."""
    return fresh_database_url() or f"sqlite:///{tmp_path / 'state.db'}"


def run_in_pty(argv: list[str], answer: str | None = None) -> tuple[int, str]:
    """Run ``costor ARGV`` with stdin/stdout/stderr on a pseudo-terminal; type
    ``answer`` at apply's confirmation prompt if given. Returns (exit code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.environ["COLUMNS"] = "120"
        os.execv(sys.executable, [sys.executable, "-m", "costor", *argv])
    screen = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        screen += data
        if answer is not None and b"Only 'yes' will be accepted" in screen:
            os.write(fd, answer.encode() + b"\n")
            answer = None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


@contextmanager
def appending(path: Path) -> Iterator[None]:
    """A real writer appending to ``path`` (a log being written) while the block runs."""
    stop = threading.Event()

    def append() -> None:
        with open(path, "ab") as handle:
            while not stop.is_set():
                handle.write(b"a line of log\n" * 64)
                handle.flush()
                time.sleep(0.001)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()
