"""Use cases: each joins the inventory (config), the state database (db) and the pool
engine (store) for one thing a user asks for. The CLI, the daemon (and later the
server) call these; they never print or choose exit codes.

The rooms, by subject:

- ``control/``: the control plane: plan, apply, host keys, pool key slots, the state
  database's schema and lock;
- ``backup/``: taking a backup: locally, or pulled from a host through the helper or SFTP;
- ``restore/``: reading snapshots back: finding them across pools, ``ls``, ``diff``,
  restore to a directory or an archive;
- ``maintenance/``: keeping pools healthy: check, forget, prune, self-test, pool copy,
  pausing a site;
- ``jobs/``: the job kinds the daemon runs, running one claimed job, notifications,
  the ``costor jobs`` verb;
- beside them, what every room shares (``context``: the inventory, state and pools of
  one command; ``progress``) and ``status``, which reports on all of them.
"""
