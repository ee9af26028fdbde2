"""Entry point: builds the argument parser from the verb modules and maps errors to exit
codes. Verb modules import their heavy dependencies inside ``run`` so that
``costor --help`` or ``costor validate`` do not pay for the engine, the database or
(later) the web and SSH stacks."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from costor.cli.common import (
    SERVER_OPTIONS,
    add_inventory_option,
    add_json_option,
    add_server_options,
)
from costor.errors import CostorError

__all__ = ["add_inventory_option", "add_json_option", "build_parser", "main"]

# Verb name -> module (costor.cli.<module>). One file per verb.
VERBS: dict[str, str] = {
    "validate": "validate_cmd",
    "fmt": "fmt_cmd",
    "plan": "plan_cmd",
    "apply": "apply_cmd",
    "show": "show_cmd",
    "backup": "backup_cmd",
    "snapshots": "snapshots_cmd",
    "ls": "ls_cmd",
    "restore": "restore_cmd",
    "diff": "diff_cmd",
    "check": "check_cmd",
    "forget": "forget_cmd",
    "prune": "prune_cmd",
    "serve": "serve_cmd",
    "jobs": "jobs_cmd",
    "status": "status_cmd",
    "maintenance": "maintenance_cmd",
    "pool": "pool_cmd",
    "db": "db_cmd",
    "hostkey": "hostkey_cmd",
    "force-unlock": "force_unlock_cmd",
    "audit": "audit_cmd",
    "token": "token_cmd",
    "session": "session_cmd",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser for every verb, or, given the ``verb`` about to run, one whose other
    verbs are bare names: a command imports its own verb's module and no other
    (``costor --version`` imports none)."""
    parser = argparse.ArgumentParser(
        prog="costor",
        description="Agentless, deduplicating, encrypted backups declared in TOML.",
    )
    parser.add_argument("--version", action="version", version=_version())
    add_server_options(parser)
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name, module_name in VERBS.items():
        if verb is not None and name != verb:
            sub.add_parser(name)  # known, so an unknown verb's error lists it
            continue
        module = importlib.import_module(f"costor.cli.{module_name}")
        verb_parser = module.add_parser(sub)
        verb_parser.set_defaults(_run=module.run)
    return parser


def verb_of(argv: Sequence[str]) -> str | None:
    """The verb ``argv`` names (its first argument that is not an option or the value
    of one of the top level's options), if it is one; ``None`` for ``--help``, an unknown
    verb or no argument, which then see every verb."""
    arguments = iter(argv)
    for argument in arguments:
        if argument in SERVER_OPTIONS:
            next(arguments, None)  # its value
        elif not argument.startswith("-"):
            return argument if argument in VERBS else None
    return None


def _version() -> str:
    from costor import __version__

    return f"costor {__version__}"


def quiet_third_party_warnings() -> None:
    """Deprecation notices from the libraries we use (e.g. asyncssh touching DSA, which
    the ``cryptography`` package deprecates) are for their authors, not for whoever runs
    ``costor``: they are ignored. Our own still show, and so does everything when warnings
    were asked for explicitly (``python -W …`` or ``PYTHONWARNINGS``)."""
    if sys.warnoptions:
        return
    # cryptography's CryptographyDeprecationWarning is a UserWarning, so notices are also
    # matched by their text; cryptography itself is not imported for its class (light
    # commands must not pay for it: tests/cli/test_terminal.py).
    for category in (DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=r"(?i).*deprecat", category=UserWarning)
    for ours in (DeprecationWarning, PendingDeprecationWarning, UserWarning):
        # inserted in front, so checked first: ours still show
        warnings.filterwarnings("default", category=ours, module=r"costor(\.|$)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: this process's arguments); its exit code.

    Called with no ``argv`` it is the process's own command (the ``costor`` script,
    ``python -m costor``), which ends when it returns: then what it made is left out of
    the interpreter's last garbage collections (:func:`_ending`)."""
    if argv is not None:
        return _main(list(argv))
    try:
        return _main(sys.argv[1:])
    finally:
        _ending()


def _ending() -> None:
    """The process ends next: what the command left is collected once (its context,
    the state database's connections, files: closed as always), and what is still alive
    (the modules and what they hold) is frozen out of the collector. Python's
    finalization collects the whole heap a few times as it tears the modules down; after
    a backup of a host that took 0.17-0.20 s of the process's wall time, against
    0.075-0.09 s collected once and frozen (a no-change pull of bench/ssh.py's tree)."""
    gc.collect()
    gc.freeze()


def _main(arguments: list[str]) -> int:
    quiet_third_party_warnings()
    if "--version" in arguments[:1]:
        print(_version())  # as argparse's version action: nothing else is read
        return 0
    verb = verb_of(arguments)
    if verb is not None:
        from costor.cli.early import derive_ahead

        derive_ahead(verb, arguments)  # the pool's key, on another core, during the imports
    parser = build_parser(verb)
    args = parser.parse_args(arguments)
    # After parsing: --help and --version do not import logging.
    from costor.util.log import configure

    configure()  # what the daemon and jobs log: to stderr, as plain lines
    try:
        if args.server:  # the verb runs on the remote site, through its API
            from costor.cli.remote import run_remotely

            return run_remotely(args)
        return int(args._run(args) or 0)
    except CostorError as error:
        from costor.cli.output import print_error

        print_error(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("costor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `costor restore … - | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
