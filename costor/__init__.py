"""CoStor: agentless, deduplicating, encrypted multi-site backups declared in TOML.

Package layers (imports go downwards only; see docs/architecture.md):

    cli        argument parsing, printing, exit codes; calls one use case per verb
    ops        use cases that join config, database, engine and transports; never print
    plan       pure decisions: desired vs recorded vs observed -> a Plan (no I/O)
    config     inventory TOML -> typed model + diagnostics; the applied configuration
    store      the pool engine and its storage backends (knows nothing of config or db)
    db         the state database (SQLModel + Alembic) and its query modules
    transport  reaching hosts: SSH (asyncssh), the shipped helper, the SFTP walk
    protocol   the host<->site wire format (with util: the bottom layer)
    util       leaf helpers, logging
"""

__version__ = "0.1.0"
