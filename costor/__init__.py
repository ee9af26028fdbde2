"""CoStor: agentless, deduplicating, encrypted multi-site backups declared in TOML.

Package layers (imports go downwards only; see docs/architecture.md):

    cli      argument parsing, printing, exit codes
    ops      use cases that join config, database and engine (backup, restore, apply)
    config   inventory TOML -> typed model + diagnostics (no I/O beyond reading files)
    store    the pool engine and its storage backends (knows nothing of config or db)
    db       the state database (SQLModel + Alembic)
    util     leaf helpers
"""

__version__ = "0.1.0"
