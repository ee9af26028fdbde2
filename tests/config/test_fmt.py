"""``costor fmt``: the canonical layout (``costor.config.fmt``) and the verb.

What is covered:

- Layout cases as data: ``fmt_cases/NAME.in.toml`` formats to ``fmt_cases/NAME.out.toml``
  (dotted and quoted keys, inline and nested inline tables, arrays of tables, sub-table
  headers, empty tables, long arrays, comments in arrays, trailing comments, comment
  blocks above and under headers, top and bottom of the file, multi-line strings,
  escapes, every scalar type). Also with CRLF line ends and with a byte-order mark.
- The properties every formatting must have, for every input here (the cases, the
  repository's ``inventory.example.toml`` and the shipped ``costor/profiles/*.toml``, which are
  canonical already, and the regression documents below): formatting again changes
  nothing, the result parses to the same data with the same types, and every comment of
  the input is in the output.
- The CLI, in-process on real files: ``--check`` names unformatted files and changes no
  byte; ``fmt`` rewrites them keeping their mode; syntax errors as ``FILE:LINE:COL``;
  which files are found without FILE arguments; an inventory that ``costor validate``
  rejects can still be formatted.

A bug in the layout becomes a new case file or a regression document here.
"""

from __future__ import annotations

import io
import re
import stat
import tomllib
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from costor.cli.main import main
from costor.config import check_inventory
from costor.config.fmt import format_toml
from costor.config.positions import scan_layout

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).parent / "fmt_cases"
CASES = sorted(path.name.removesuffix(".in.toml") for path in CASES_DIR.glob("*.in.toml"))
CANONICAL_FILES = [
    REPO / "inventory.example.toml",
    *sorted((REPO / "costor" / "profiles").glob("*.toml")),
]


def case_input(case: str) -> str:
    return (CASES_DIR / f"{case}.in.toml").read_text(encoding="utf-8")


def case_output(case: str) -> str:
    return (CASES_DIR / f"{case}.out.toml").read_text(encoding="utf-8")


def typed(value: Any) -> Any:
    """``value`` with every scalar as (type, repr): ``1``, ``1.0`` and ``true`` differ,
    and ``nan`` equals ``nan``."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, repr(value))


def comments(text: str) -> Counter[str]:
    """Every comment of ``text`` (from ``#`` to the end of its line), with its count."""
    return Counter(comment.text for comment in scan_layout(text)[1])


def formatted_with_properties(text: str) -> str:
    """``format_toml(text)``, after checking what must hold for any input."""
    formatted = format_toml(text)
    assert format_toml(formatted) == formatted, "formatting again changed the text"
    assert typed(tomllib.loads(formatted)) == typed(tomllib.loads(text.removeprefix("\ufeff")))
    assert comments(formatted) == comments(text), "a comment was lost or duplicated"
    assert "\r" not in formatted and not formatted.startswith("\ufeff")
    return formatted


# --- the layout, as case files -------------------------------------------------------------


def test_there_are_cases() -> None:
    assert len(CASES) >= 15
    for case in CASES:
        assert (CASES_DIR / f"{case}.out.toml").is_file(), f"{case}.out.toml is missing"


@pytest.mark.parametrize("case", CASES)
def test_case(case: str) -> None:
    assert formatted_with_properties(case_input(case)) == case_output(case)


@pytest.mark.parametrize("case", CASES)
def test_expected_output_is_canonical(case: str) -> None:
    assert formatted_with_properties(case_output(case)) == case_output(case)


@pytest.mark.parametrize("case", CASES)
def test_case_with_crlf_line_ends(case: str) -> None:
    text = case_input(case).replace("\n", "\r\n")
    assert formatted_with_properties(text) == case_output(case)


@pytest.mark.parametrize("case", CASES)
def test_case_with_byte_order_mark(case: str) -> None:
    assert formatted_with_properties("\ufeff" + case_input(case)) == case_output(case)


# --- the repository's own files --------------------------------------------------------------


@pytest.mark.parametrize("file", CANONICAL_FILES, ids=lambda file: file.name)
def test_repository_files_are_canonical(file: Path) -> None:
    text = file.read_text(encoding="utf-8")
    assert formatted_with_properties(text) == text


@pytest.mark.parametrize("file", CANONICAL_FILES, ids=lambda file: file.name)
def test_repository_files_keep_their_comment_lines_in_order(file: Path) -> None:
    """The example with its layout undone (blank lines dropped, trailing comments one
    space after the code) keeps every comment line, in the order written."""
    text = file.read_text(encoding="utf-8")
    scrambled = [
        line if line.startswith("#") else re.sub(r"\s+#", " #", line)
        for line in text.splitlines()
        if line.strip()
    ]
    formatted = formatted_with_properties("\n".join(scrambled) + "\n")
    assert formatted != text

    def comment_lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip().startswith("#")]

    assert comment_lines(formatted) == comment_lines(text)


# --- rules stated in the docstring, checked directly -------------------------------------------


def test_array_wraps_past_100_columns_with_trailing_commas() -> None:
    for width in (99, 100, 101, 140):
        prefix = 'k = ["'
        line = prefix + "x" * (width - len(prefix) - 2) + '"]'
        assert len(line) == width
        formatted = formatted_with_properties(line + "\n")
        if width <= 100:
            assert formatted == line + "\n"
        else:
            assert formatted == 'k = [\n    "' + "x" * (width - len(prefix) - 2) + '",\n]\n'


def test_trailing_comments_of_consecutive_lines_are_aligned() -> None:
    text = "a = 1 # one\nlonger_key = 2 # two\n\nb = 3     # alone\n"
    assert formatted_with_properties(text) == (
        "a = 1           # one\nlonger_key = 2  # two\n\nb = 3  # alone\n"
    )


def test_comment_blocks_keep_their_place_around_headers() -> None:
    text = (
        "# file header\n\n"
        "[costor]\n"
        'state_dir = ".costor"\n\n'
        "# about sites, a blank line before the header\n\n"
        "[sites.hq]\n"
        "# under the header, then a blank line\n\n"
        "# above the next header\n"
        "[pools.main]\n"
        'site = "hq"\n'
    )
    assert formatted_with_properties(text) == text


def test_empty_document_and_blank_document() -> None:
    assert formatted_with_properties("") == ""
    assert formatted_with_properties("\n\n  \n") == ""


# --- regressions: documents that were formatted wrongly --------------------------------------

REGRESSIONS = {
    # Comments of keys under a sub-table header were dropped when it became inline.
    "sub_table_key_comments": (
        '[clients.web1]\n[clients.web1.ssh]\nuser = "costor"  # the login\n# the port\nport = 22\n',
        '[clients.web1]\n# the login\n# the port\nssh = { user = "costor", port = 22 }\n',
    ),
    # So were the comments of dotted keys.
    "dotted_key_comments": (
        "[clients.web1]\na.b = 1  # first\na.c = 2  # second\n",
        "[clients.web1]\n# second\na = { b = 1, c = 2 }  # first\n",
    ),
    # A header for a table of tables was dropped with its comments.
    "table_of_tables_header_comments": (
        "[pools]  # every pool\n[pools.main]\nsite = 1\n",
        "# every pool\n\n[pools.main]\nsite = 1\n",
    ),
    # ... and, after a blank line, left two blank lines (the next run removed one).
    "table_of_tables_header_after_blank": (
        "[costor]\nx = 1\n\n[pools]\n[pools.main]\ny = 1\n",
        "[costor]\nx = 1\n\n[pools.main]\ny = 1\n",
    ),
    # A second trailing comment of one key (on the closing bracket) was dropped.
    "comment_on_closing_bracket": (
        "x = [  # open\n]  # close\ny = 1\n",
        "x = []  # open\n# close\ny = 1\n",
    ),
    # A commented-out last element moved out of its array, above the next key.
    "commented_out_last_element": (
        'exclude = [\n  "/proc",\n  # "/sys",\n]\ny = 1\n',
        'exclude = [\n    "/proc",\n    # "/sys",\n]\ny = 1\n',
    ),
    # A comment after the first element, on the key's line, went to the key and the
    # array was joined onto one line.
    "comment_after_first_element": (
        'paths = ["/etc",  # config\n  "/srv"]\n',
        'paths = [\n    "/etc",  # config\n    "/srv",\n]\n',
    ),
    # Comments and a blank line above an array's first element went below the key.
    "comments_above_first_element": (
        "[a]\nb = [\n    # one\n\n    # two\n    {},\n]\n",
        "[a]\nb = [\n    # one\n\n    # two\n    {},\n]\n",
    ),
    # A blank line inside a multi-line string became a blank line before the next key.
    "blank_line_in_multiline_string": (
        'a = """\nx\n\ny"""\nb = 1\n',
        'a = "x\\n\\ny"\nb = 1\n',
    ),
    # A literal U+2028 in a string shifted the line numbers (str.splitlines): the second
    # run moved comments.
    "line_separator_in_string": (
        'a = "x\u2028y"\n# c1\nb = 1\n[t]\n# c2\nc = 2\n',
        'a = "x\u2028y"\n# c1\nb = 1\n\n[t]\n# c2\nc = 2\n',
    ),
    # NaN never equals itself: the "same data" check refused every document with one.
    "nan": ("x = nan\ny = -nan\n", "x = nan\ny = nan\n"),
    # A key ending in a newline was written bare: `k<newline> = 1`, not TOML.
    "key_ending_in_newline": ('"k\\n" = 1\n', '"k\\n" = 1\n'),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name: str) -> None:
    text, expected = REGRESSIONS[name]
    assert formatted_with_properties(text) == expected


def test_syntax_error_is_tomllib_s() -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        format_toml("a = \n")


# --- the CLI -----------------------------------------------------------------------------------

UNFORMATTED_INVENTORY = """\
[costor]
state_dir=".costor"   # state
[sites.hq]
[pools.main]
site="hq"
backend="local"
path="pool"
passphrase.env="COSTOR_TEST_PASSPHRASE"
"""
UNFORMATTED_PROFILE = "exclude = [\n  '/proc',\n  '/sys',\n]\none_file_system=true\n"
FORMATTED_PROFILE = 'one_file_system = true\nexclude = ["/tmp"]  # scratch\n'


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def costor_fmt(*argv: str | Path) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["fmt", *(str(arg) for arg in argv)])
    return Result(code, out.getvalue(), err.getvalue())


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root``: its bytes, mode and modification time."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            status = path.stat()
            files[str(path.relative_to(root))] = (
                path.read_bytes(),
                stat.S_IMODE(status.st_mode),
                status.st_mtime_ns,
            )
    return files


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """inventory.toml and profiles/ (one unformatted, one formatted, one not TOML)."""
    (tmp_path / "inventory.toml").write_text(UNFORMATTED_INVENTORY)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "linux.toml").write_text(UNFORMATTED_PROFILE)
    (tmp_path / "profiles" / "tidy.toml").write_text(FORMATTED_PROFILE)
    (tmp_path / "profiles" / "README.md").write_text("# not a profile\n")
    return tmp_path


def test_check_names_unformatted_files_and_changes_nothing(project: Path) -> None:
    before = snapshot(project)
    inventory = project / "inventory.toml"

    result = costor_fmt("--check", "-c", inventory)

    assert result.code == 1
    assert result.stdout.splitlines() == [str(inventory), str(project / "profiles/linux.toml")]
    assert result.stderr == "costor: 2 file(s) not formatted; run `costor fmt`\n"
    assert snapshot(project) == before


def test_fmt_rewrites_files_keeping_their_mode(project: Path) -> None:
    inventory = project / "inventory.toml"
    profile = project / "profiles" / "linux.toml"
    tidy = project / "profiles" / "tidy.toml"
    inventory.chmod(0o640)
    profile.chmod(0o604)
    tidy_before = tidy.stat()

    result = costor_fmt("-c", inventory)

    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [str(inventory), str(profile)]
    assert result.stderr == ""
    assert inventory.read_text() == format_toml(UNFORMATTED_INVENTORY)
    assert inventory.read_text() == (
        "[costor]\n"
        'state_dir = ".costor"  # state\n'
        "\n"
        "[sites.hq]\n"
        "\n"
        "[pools.main]\n"
        'site = "hq"\n'
        'backend = "local"\n'
        'path = "pool"\n'
        'passphrase = { env = "COSTOR_TEST_PASSPHRASE" }\n'
    )
    assert profile.read_text() == 'exclude = ["/proc", "/sys"]\none_file_system = true\n'
    assert stat.S_IMODE(inventory.stat().st_mode) == 0o640
    assert stat.S_IMODE(profile.stat().st_mode) == 0o604
    # The formatted file is not rewritten at all.
    assert (tidy.stat().st_ino, tidy.stat().st_mtime_ns) == (
        tidy_before.st_ino,
        tidy_before.st_mtime_ns,
    )
    assert sorted(p.name for p in project.rglob(".*")) == [], "a temporary file was left"

    after = snapshot(project)
    assert costor_fmt("--check", "-c", inventory) == Result(0, "", "")
    assert costor_fmt("-c", inventory) == Result(0, "", "")
    assert snapshot(project) == after


def test_syntax_error_is_reported_with_its_position(project: Path) -> None:
    broken = project / "broken.toml"
    broken.write_text('[pools.main]\nsite = "hq"\nbackend = \n')
    profile = project / "profiles" / "linux.toml"
    broken_before = broken.read_bytes()

    result = costor_fmt("-c", project / "inventory.toml", broken, profile)

    assert result.code == 1
    assert result.stderr == f"{broken}:3:11: invalid TOML: invalid value\n"
    assert broken.read_bytes() == broken_before
    # The other files are formatted all the same.
    assert result.stdout.splitlines() == [str(profile)]
    assert profile.read_text() == format_toml(UNFORMATTED_PROFILE)


def test_syntax_error_under_check(project: Path) -> None:
    broken = project / "broken.toml"
    broken.write_text("a = [1,\n")
    result = costor_fmt("--check", broken)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{broken}:2:1: invalid TOML: ")
    assert broken.read_text() == "a = [1,\n"


def test_explicit_files_are_the_only_ones_formatted(project: Path) -> None:
    before = snapshot(project)
    profile = project / "profiles" / "linux.toml"

    result = costor_fmt("-c", project / "inventory.toml", profile)

    assert result == Result(0, f"{profile}\n", "")
    after = snapshot(project)
    assert after.pop("profiles/linux.toml") != before.pop("profiles/linux.toml")
    assert after == before


def test_default_files_follow_custom_profile_paths(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[costor]\nprofile_paths = ["shared/profiles", "/nonexistent", "more"]\n')
    for directory in ("shared/profiles", "more", "profiles"):
        (tmp_path / directory).mkdir(parents=True)
        (tmp_path / directory / "p.toml").write_text("a=1\n")
    (tmp_path / "more" / "q.toml").write_text("b=2\n")

    result = costor_fmt("--check", "-c", inventory)

    assert result.code == 1
    assert result.stdout.splitlines() == [
        str(tmp_path / "shared/profiles/p.toml"),
        str(tmp_path / "more/p.toml"),
        str(tmp_path / "more/q.toml"),
    ]
    assert costor_fmt("-c", inventory).code == 0
    assert (tmp_path / "more" / "q.toml").read_text() == "b = 2\n"
    assert (tmp_path / "profiles" / "p.toml").read_text() == "a=1\n"  # not on the path


def test_a_directory_listed_twice_is_formatted_once(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text('[costor]\nprofile_paths = ["profiles", "./profiles"]\n')
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.toml").write_text("a=1\n")

    result = costor_fmt("--check", "-c", inventory)

    assert result.stdout.splitlines() == [str(tmp_path / "profiles/p.toml")]


def test_semantically_invalid_inventory_is_formatted(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[pools.main]\nsite="nowhere"\ncolour="blue"  # not a key\n[clients.web1]\npaths=["srv"]\n'
    )
    _model, diagnostics = check_inventory(inventory)
    assert any("colour" in diagnostic.key for diagnostic in diagnostics)

    result = costor_fmt("-c", inventory)

    assert result == Result(0, f"{inventory}\n", "")
    assert inventory.read_text() == (
        '[pools.main]\nsite = "nowhere"\ncolour = "blue"  # not a key\n'
        '\n[clients.web1]\npaths = ["srv"]\n'
    )


@pytest.mark.parametrize(
    "raw", [b"a = 1\r\nb = 2\r\n", b"\xef\xbb\xbfa = 1\nb = 2\n"], ids=["crlf", "bom"]
)
def test_crlf_and_byte_order_mark_are_not_canonical(tmp_path: Path, raw: bytes) -> None:
    """LF and no BOM, whatever the rest of the file: otherwise a file that needs no other
    change would keep them and one that does would lose them."""
    file = tmp_path / "inventory.toml"
    file.write_bytes(raw)

    check = costor_fmt("--check", file)
    assert (check.code, check.stdout) == (1, f"{file}\n")
    assert file.read_bytes() == raw

    assert costor_fmt(file) == Result(0, f"{file}\n", "")
    assert file.read_bytes() == b"a = 1\nb = 2\n"


def test_a_symlink_stays_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("a=1\n")
    target.chmod(0o600)
    link = tmp_path / "inventory.toml"
    link.symlink_to(target)

    assert costor_fmt(link) == Result(0, f"{link}\n", "")

    assert link.is_symlink()
    assert target.read_text() == "a = 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_not_utf8_is_reported_and_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes(b'a = 1\nname = "caf\xe9"\n')

    result = costor_fmt(file)

    assert result.code == 1
    assert result.stderr == f"{file}:2:12: not UTF-8: invalid continuation byte\n"
    assert file.read_bytes() == b'a = 1\nname = "caf\xe9"\n'


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = costor_fmt("-c", missing)
    assert result.code == 1
    assert result.stderr == f"{missing}:1:1: cannot read: No such file or directory\n"
    assert not missing.exists()


def test_inventory_default_from_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -c: $COSTOR_INVENTORY (read when the parser is built), as for every verb."""
    monkeypatch.setenv("COSTOR_INVENTORY", str(project / "inventory.toml"))
    result = costor_fmt("--check")
    assert result.stdout.splitlines() == [
        str(project / "inventory.toml"),
        str(project / "profiles/linux.toml"),
    ]
