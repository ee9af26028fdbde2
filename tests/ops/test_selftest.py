"""costor.ops.maintenance.selftest, called without the CLI: a sampled file is restored
as any restore to a directory other than / is (no setuid/setgid bits: the snapshot may
come from a hostile host), and the self-test does not take that for a wrong mode."""

from __future__ import annotations

from pathlib import Path

from support.fixtures import Site

from costor.ops.backup.run import run_backup
from costor.ops.context import Context
from costor.ops.maintenance.selftest import selftest


def test_a_setuid_file_passes_the_self_test(site: Site, source: Path) -> None:
    for path in source.rglob("*"):
        if path.is_file():
            path.chmod(0o4755)  # every sampled file carries the setuid bit
    assert site.cli("apply", "--auto-approve").code == 0
    ctx = Context(site.inventory)
    run_backup(ctx, "alpha", trigger=None)
    report = selftest(ctx, "alpha", files=10, seed=1)
    assert report.files_checked >= 3 and not report.failures
