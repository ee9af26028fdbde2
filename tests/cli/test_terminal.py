"""What a person at a terminal sees: progress bars on a TTY, none in pipes or --json;
and start-up that does not pay for stacks a command does not use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.fixtures import Site, run_in_pty


def test_progress_bar_on_a_terminal_only(applied: Site, tmp_path: Path) -> None:
    inventory = str(applied.inventory)
    code, screen = run_in_pty(["backup", "-c", inventory, "alpha"])
    assert code == 0, screen
    assert "backup alpha" in screen and "%|" in screen and "files" in screen
    code, screen = run_in_pty(
        ["restore", "-c", inventory, "alpha:latest", "--target", str(tmp_path / "r")]
    )
    assert code == 0 and "restore" in screen and "%|" in screen
    code, screen = run_in_pty(["check", "-c", inventory, "--read-data"])
    assert code == 0 and "check" in screen and "%|" in screen
    piped = applied.run_process("backup", "alpha")
    assert piped.code == 0 and "%|" not in piped.stderr
    as_json = applied.run_process("backup", "alpha", "--json")
    assert "%|" not in as_json.stderr and as_json.stdout.lstrip().startswith("{")


def test_light_commands_do_not_import_heavy_stacks(site: Site) -> None:
    probe = (
        "import sys\n"
        "from costor.cli.main import main\n"
        f"code = main(['validate', '-c', {str(site.inventory)!r}])\n"
        "heavy = [m for m in ('sqlalchemy', 'sqlmodel', 'alembic', 'fastapi', 'asyncssh', "
        "'boto3', 'zstandard', 'cryptography', 'pyfastcdc', 'tqdm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
