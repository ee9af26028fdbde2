"""CoStor installed from its wheel, outside the checkout, has what it needs at run time.

A wheel is built from a copy of the source (``pip wheel``: the real build backend and
``[tool.setuptools.package-data]``), installed into a fresh venv in a temporary
directory, and the README's first command is run with that venv's ``costor`` in a
directory holding only a copy of ``inventory.example.toml``: apply, backup demo,
snapshots, restore. Then ``costor validate`` of inventories naming the shipped profiles
(``linux-server``, ``postgresql``, ``mysql``), with no ``profiles`` directory beside
them: they are found in the installed package.

The new venv takes its dependencies from the venv running the tests, without the
network: a ``.pth`` file there names this venv's site-packages (a path listed in a
``.pth`` file is added to ``sys.path``, but ``.pth`` files inside it are not run, so
an editable install of CoStor in it is not seen). Building the wheel fetches the build
backend (setuptools) from the package index, as any ``pip wheel`` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "demo-only-passphrase"  # the README's

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        bool(os.environ.get("COSTOR_TEST_DATABASE")),
        reason="the wheel does not depend on the database: run once, in the SQLite pass",
    ),
]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def build_wheel(root: Path, env: dict[str, str]) -> Path:
    """The wheel of a copy of the checkout (a build writes build/ and *.egg-info into
    the source, which must not happen in the checkout)."""
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(
        REPO / "costor", source / "costor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    wheels = root / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        cwd=root,
        env=env,
        timeout=150,
    )
    [wheel] = wheels.glob("costor-*.whl")
    return wheel


def make_venv(root: Path, wheel: Path, env: dict[str, str]) -> Path:
    """A venv with CoStor installed from ``wheel``; its dependencies (and pip) are the
    running venv's. Returns its bin directory."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        cwd=root,
        env=env,
    ).strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib) / "costor-test-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=root,
        env=env,
    )
    return venv / "bin"


def test_the_wheel_runs_the_readme_demo_and_has_the_shipped_profiles(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COSTOR_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheel = build_wheel(tmp_path, env)
    bin_dir = make_venv(tmp_path, wheel, env)

    # The CoStor that runs is the installed one, not the checkout's.
    imported = run(
        [str(bin_dir / "python"), "-c", "import costor; print(costor.__file__)"],
        cwd=tmp_path,
        env=env,
    ).strip()
    assert Path(imported).is_relative_to(tmp_path / "venv"), imported
    shipped = Path(imported).parent / "profiles"
    assert sorted(p.name for p in shipped.glob("*.toml")) == [
        "btrfs-snapshot.toml",
        "fsfreeze.toml",
        "linux-server.toml",
        "lvm-snapshot.toml",
        "lvm-thin-snapshot.toml",
        "mysql.toml",
        "postgresql.toml",
        "zfs-snapshot.toml",
    ]

    # The README's first command, from a directory with only the example inventory.
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy2(REPO / "inventory.example.toml", demo / "inventory.example.toml")
    demo_env = {
        **env,
        "COSTOR_POOL_PASSPHRASE": PASSPHRASE,
        "COSTOR_INVENTORY": "inventory.example.toml",
    }
    costor = str(bin_dir / "costor")
    restored = tmp_path / "costor-restore"
    run([costor, "apply", "--auto-approve"], cwd=demo, env=demo_env)
    run([costor, "backup", "demo"], cwd=demo, env=demo_env)
    listing = run([costor, "snapshots"], cwd=demo, env=demo_env)
    assert "demo" in listing, listing
    run([costor, "restore", "demo:latest", "--target", str(restored)], cwd=demo, env=demo_env)
    source = Path("/usr/share/base-files")
    expected = sorted(
        p.relative_to(source) for p in source.rglob("*") if not p.name.endswith(".md5sums")
    )
    copy = restored / source.relative_to("/")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == expected
    for path in expected:
        if (source / path).is_file() and not (source / path).is_symlink():
            assert (copy / path).read_bytes() == (source / path).read_bytes(), path

    # The shipped profiles are found with no profiles directory beside the inventory.
    assert not (demo / "profiles").exists()
    example = (demo / "inventory.example.toml").read_text()
    for profiles in ('["linux-server"]', '["linux-server", "postgresql"]', '["mysql"]'):
        text = example.replace('# profiles = ["linux-server"]', f"profiles = {profiles}", 1)
        assert text != example
        (demo / "with-profiles.toml").write_text(text)
        run([costor, "validate", "-c", "with-profiles.toml"], cwd=demo, env=demo_env)
    (demo / "unknown.toml").write_text(
        example.replace('# profiles = ["linux-server"]', 'profiles = ["nosuch"]', 1)
    )
    unknown = subprocess.run(
        [costor, "validate", "-c", "unknown.toml"],
        cwd=demo,
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode != 0 and "unknown profile 'nosuch'" in unknown.stderr, unknown
