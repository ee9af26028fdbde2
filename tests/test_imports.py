"""Below the CLI, modules import at the top. A function-local import is allowed only
where it selects an optional, heavy stack at run time, so that a command which does
not need it never loads it: each such module is listed here with the reason, and a
comment at the import says the same."""

from __future__ import annotations

import ast
from pathlib import Path

import costor

ROOT = Path(costor.__file__).parent

# module imported inside a function -> why it may be
OPTIONAL_STACKS = {
    "costor.transport.ssh": "asyncssh: only clients reached over SSH need it",
    "costor.ops.backup.pull": "the SSH transport (asyncssh), chosen per client",
    "costor.store.backends.s3": "boto3 (~0.3 s of imports): only pools on S3 need it",
    "costor.store.backends.http": "httpx (~0.13 s): only https:// pool locations need it",
    "alembic": "only a database whose schema is behind is migrated",
    "alembic.config": "as alembic",
    "pyfastcdc": "only writing a backup chunks data",
    "croniter": "only computing a schedule needs it",
}

# The CLI's verbs import their use cases when they run (a command loads its own verb
# only); the helper runs on the backed-up host, with the standard library alone.
EDGES = ("cli/", "transport/helper.py")


def _function_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    found.append((inner.lineno, inner.module))
                elif isinstance(inner, ast.Import):
                    found.extend((inner.lineno, alias.name) for alias in inner.names)
    return found


def test_below_the_cli_imports_are_at_the_top_except_optional_stacks() -> None:
    offending = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(EDGES):
            continue
        for line, module in _function_imports(path):
            if module not in OPTIONAL_STACKS:
                offending.append(f"costor/{relative}:{line} imports {module} in a function")
    assert offending == []


def test_the_rule_sees_a_function_local_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    import json\n    from costor import errors\n")
    assert _function_imports(sample) == [(4, "json"), (5, "costor")]
