"""Names from a backed-up host reach the terminal escaped (as GNU ``ls -b``): a newline
or an escape sequence in a file name cannot rewrite what the terminal shows; ``--json``
keeps the names as they are (issue 19, item 11)."""

from __future__ import annotations

import os

from support.fixtures import Site

from costor.cli.output import terminal_text


def test_terminal_text_escapes_what_a_terminal_would_act_on() -> None:
    assert terminal_text("plain name.txt") == "plain name.txt"
    assert terminal_text("été ✓") == "été ✓"  # printable text stays as it is
    assert terminal_text("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert terminal_text("\x1b[2Jclear") == "\\x1b[2Jclear"
    assert terminal_text("back\\slash") == "back\\\\slash"  # unambiguous: \x41 is not A
    assert terminal_text(b"bad\xffbyte") == "bad\\xffbyte"
    assert terminal_text("bad\udcffbyte") == "bad\\xffbyte"  # surrogateescape'd
    assert terminal_text("\u202etxt.exe") == "\\u202etxt.exe"  # right-to-left override


def test_ls_and_diff_escape_hostile_names(site: Site) -> None:
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "alpha").code == 0
    source = site.inventory.parent / "src"
    hostile = [b"two\nlines", b"\x1b[2Jwiped", b"not\xffutf8"]
    for name in hostile:
        with open(os.path.join(os.fsencode(source), name), "wb") as handle:
            handle.write(b"x")
    assert site.cli("backup", "alpha").code == 0

    listing = site.cli("ls", "alpha:latest", "/")
    assert listing.code == 0, listing.stderr
    assert "\x1b" not in listing.stdout and "\udcff" not in listing.stdout
    lines = listing.stdout.splitlines()
    for shown in ("two\\nlines", "\\x1b[2Jwiped", "not\\xffutf8"):
        assert any(line.endswith(shown) for line in lines), (shown, lines)

    snapshots = sorted(site.cli("snapshots", "--json").json(), key=lambda s: s["time"])
    diff = site.cli("diff", snapshots[0]["id"], snapshots[-1]["id"])
    assert diff.code == 0, diff.stderr
    assert "\x1b" not in diff.stdout and "two\\nlines" in diff.stdout

    as_json = site.cli("ls", "alpha:latest", "/", "--json").json()
    names = {entry["path"].rsplit("/", 1)[-1] for entry in as_json}
    assert "two\nlines" in names and "\x1b[2Jwiped" in names
