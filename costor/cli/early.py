"""Start deriving a pool's key before the heavy imports (costor/util/argon2.py).

A new ``costor backup`` or ``costor snapshots`` process spends ~0.35 s importing the
state's, the configuration's and the engine's stacks, on one core, holding the GIL;
then it opens the pool: an argon2id derivation of ~0.16 s, which releases the GIL.
Started here, from the inventory file as it is on disk (tomllib, the key slot files of a
pool on a local path), the derivation runs on the other core during those imports, and
the pool's opening later takes its result (``util.argon2.derive`` with the same
passphrase, salt and parameters).

This is a guess and only a guess: what is opened is still what was applied, read from
the state; a guess that does not match (an edited inventory, a pool elsewhere than a
local path, an unreadable slot) costs CPU and nothing else. Nothing here raises, prints
or imports more than the standard library, and ``costor.util.argon2`` only for a verb
that opens pools.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

# The verbs that open pools; which pools: the named client's, else every declared one.
POOL_VERBS = frozenset({"backup", "snapshots", "ls", "restore", "diff"})
MAX_SLOTS = 8  # slots read ahead per pool: the guess stays cheap with many of them
MAX_POOLS = 2  # pools derived ahead: each costs ~0.16 s of a core


def derive_ahead(verb: str, arguments: list[str]) -> None:
    """For a pool-opening ``verb``: start the derivations its pool's key slots need."""
    if verb not in POOL_VERBS or _option(arguments, "--server") or os.environ.get("COSTOR_SERVER"):
        return  # a remote site's command opens nothing here
    try:
        _derive_ahead(verb, arguments)
    except Exception:  # noqa: BLE001  (a guess: any failure only means no head start)
        return


def _derive_ahead(verb: str, arguments: list[str]) -> None:
    import tomllib

    from costor.util import argon2  # cryptography: not for the verbs that open no pool

    inventory = Path(_option(arguments, "-c", "--inventory") or _default_inventory())
    document = tomllib.loads(inventory.read_text(encoding="utf-8"))
    pools: dict[str, Any] = document.get("pools") or {}
    wanted = _pools_of(verb, arguments, document, pools)
    for name in wanted[:MAX_POOLS]:
        config = pools.get(name)
        if not isinstance(config, dict) or config.get("backend", "local") != "local":
            continue
        passphrase = _secret(config.get("passphrase"), inventory.parent)
        path = config.get("path")
        if passphrase is None or not isinstance(path, str):
            continue
        keys = inventory.parent / path / "keys"
        for slot_file in sorted(keys.iterdir())[:MAX_SLOTS]:
            slot = json.loads(slot_file.read_bytes())
            params = slot["params"]
            if slot.get("kdf") != "argon2id" or not _within_caps(params):
                continue
            argon2.derive_ahead(
                passphrase.encode(),
                base64.b64decode(slot["salt"]),
                iterations=int(params["iterations"]),
                lanes=int(params["lanes"]),
                memory_kib=int(params["memory_cost_kib"]),
            )


def _pools_of(
    verb: str, arguments: list[str], document: dict[str, Any], pools: dict[str, Any]
) -> list[str]:
    """The pool the command will open: ``--pool``, else the client's (``backup CLIENT``,
    ``--client C``, ``CLIENT:latest``), else every declared pool."""
    named = _option(arguments, "--pool")
    if named:
        return [named]
    clients: dict[str, Any] = document.get("clients") or {}
    client = _option(arguments, "--client")
    positional = _positionals(arguments, verb)
    if client is None and positional:
        if verb == "backup":
            client = positional[0]
        elif ":" in positional[0]:  # CLIENT:latest (a snapshot id says no pool)
            client = positional[0].split(":", 1)[0]
    if client is None:
        return list(pools)
    config = clients.get(client)
    pool = config.get("pool") if isinstance(config, dict) else None
    return [pool] if isinstance(pool, str) else []  # an unknown client: the command fails


def _within_caps(params: Any) -> bool:
    """Parameters no larger than a pool this process creates (a slot made to cost more is
    left to the pool's opening, which checks it against the real caps)."""
    return (
        isinstance(params, dict)
        and 0 < int(params.get("iterations", 0)) <= 16
        and 0 < int(params.get("lanes", 0)) <= 16
        and 0 < int(params.get("memory_cost_kib", 0)) <= 256 * 1024
    )


def _secret(reference: Any, base: Path) -> str | None:
    """The value of ``{ env = … }`` or ``{ file = … }`` as config/secret.py reads it."""
    if not isinstance(reference, dict):
        return None
    if isinstance(reference.get("env"), str):
        return os.environ.get(reference["env"]) or None
    if isinstance(reference.get("file"), str):
        text = (base / reference["file"]).read_text(encoding="utf-8")
        return text.removesuffix("\n").removesuffix("\r") or None
    return None


def _default_inventory() -> str:
    return os.environ.get("COSTOR_INVENTORY", "inventory.toml")


def _option(arguments: list[str], *names: str) -> str | None:
    for index, argument in enumerate(arguments):
        for name in names:
            if argument == name and index + 1 < len(arguments):
                return arguments[index + 1]
            if argument.startswith(name + "=") and name.startswith("--"):
                return argument.split("=", 1)[1]
    return None


# Options of these verbs that take a value (their value is not a positional argument).
_VALUED = {"-c", "--inventory", "--client", "--pool", "--target", "--archive", "--format"}
_VALUED |= {"--include", "--exclude", "--overwrite", "--parallel", "--server", "--server-ca"}
_VALUED |= {"--token-file"}


def _positionals(arguments: list[str], verb: str) -> list[str]:
    found: list[str] = []
    seen_verb = False
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in _VALUED:
            skip = True
        elif argument.startswith("-"):
            continue
        elif not seen_verb and argument == verb:
            seen_verb = True
        elif seen_verb:
            found.append(argument)
    return found
