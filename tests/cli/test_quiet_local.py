"""A local-only inventory never touches the SSH stack, and no command prints the
deprecation notices of the libraries CoStor uses (issue 17: the README's demo printed
asyncssh's ``CryptographyDeprecationWarning: DSA is deprecated`` tracebacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support.fixtures import Site


def _env() -> dict[str, str]:
    """Warnings show as they would for a user: no -W options inherited from the runner."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_local_apply_and_backup_print_no_warnings(site: Site) -> None:
    for argv in (("apply", "--auto-approve"), ("backup", "alpha"), ("snapshots",)):
        result = site.run_process(*argv, env={"PYTHONWARNINGS": ""})
        assert result.code == 0, result.stderr
        assert "Warning" not in result.stderr, (argv, result.stderr)
        assert "deprecated" not in result.stderr, (argv, result.stderr)


def test_local_commands_do_not_import_the_ssh_stack(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    code = f"""
        import json, sys
        from costor.cli.main import main
        inventory = {str(site.inventory)!r}
        codes = []
        for argv in (
            ["plan"],
            ["apply", "--auto-approve"],
            ["backup", "alpha"],
            ["check"],
            ["restore", "alpha:latest", "--target", {str(target)!r}],
        ):
            codes.append(main([argv[0], "-c", inventory, *argv[1:]]))
        loaded = sorted(m for m in sys.modules if m == "asyncssh" or m.startswith(
            ("asyncssh.", "costor.transport.ssh")))
        print(json.dumps({{"codes": codes, "loaded": loaded}}))
    """
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["codes"] == [0, 0, 0, 0, 0], result.stderr
    assert document["loaded"] == []
    assert "Warning" not in result.stderr, result.stderr


def test_third_party_deprecations_are_silenced_ours_are_not(tmp_path: Path) -> None:
    code = """
        import warnings
        from cryptography.utils import CryptographyDeprecationWarning
        from costor.cli.main import quiet_third_party_warnings

        quiet_third_party_warnings()
        for category in (DeprecationWarning, CryptographyDeprecationWarning):
            name = category.__name__
            warnings.warn_explicit(f"theirs {name}", category, "x.py", 1, module="asyncssh.x")
            warnings.warn_explicit(f"ours {name}", category, "y.py", 1, module="costor.ops.y")
        warnings.warn_explicit("a plain warning", UserWarning, "z.py", 1, module="asyncssh.z")
    """
    stderr = _python(code, tmp_path).stderr
    assert "theirs" not in stderr
    assert "ours DeprecationWarning" in stderr
    assert "ours CryptographyDeprecationWarning" in stderr
    assert "a plain warning" in stderr  # only deprecations are silenced


def test_asked_for_warnings_still_show(tmp_path: Path) -> None:
    """``python -W default`` (or PYTHONWARNINGS) wins: the user asked to see them."""
    code = """
        import warnings
        from costor.cli.main import quiet_third_party_warnings

        quiet_third_party_warnings()
        warnings.warn_explicit("theirs", DeprecationWarning, "x.py", 1, module="asyncssh.x")
    """
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "theirs" in result.stderr


def test_a_command_imports_its_own_verb_only(site: Site, tmp_path: Path) -> None:
    """``costor --version`` imports no verb, and a verb none of the others (nor the
    engine's writing side, nor the state database's migrations)."""
    code = f"""
        import json, sys
        from costor.cli.main import main
        inventory = {str(site.inventory)!r}
        seen = {{}}
        for argv in (["--version"], ["validate", "-c", inventory]):
            before = set(sys.modules)
            try:
                code = main(argv)
            except SystemExit as exit:
                code = exit.code
            seen[argv[0]] = {{"code": code, "loaded": sorted(
                m for m in set(sys.modules) - before
                if m.endswith("_cmd") or m.startswith(("pyfastcdc", "alembic", "boto3")))}}
        print(json.dumps(seen))
    """
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["--version"] == {"code": 0, "loaded": []}
    assert seen["validate"] == {"code": 0, "loaded": ["costor.cli.validate_cmd"]}
