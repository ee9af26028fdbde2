"""An inventory nested deeper than the TOML parser can follow is a clear error naming
the file, never a RecursionError traceback: validate, fmt and the commands that read
the inventory (issue 19, item 11)."""

from __future__ import annotations

from pathlib import Path

from support.fixtures import Site


def test_deep_nesting_is_a_clear_error(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    deep = site.inventory.read_text() + "\nhostile = " + "[" * 5000 + "]" * 5000 + "\n"
    site.inventory.write_text(deep)
    for argv in (("validate",), ("fmt", "--check"), ("snapshots",), ("plan",)):
        result = site.cli(*argv)
        text = result.stdout + result.stderr
        assert "Traceback" not in text and "RecursionError" not in text, (argv, text)
        if argv[0] in ("validate", "fmt", "plan"):
            assert result.code == 1, (argv, text)
            assert f"{Path(site.inventory).name}:1:1:" in text and "nested too deeply" in text
