"""The state database: the control plane's state (each resource as applied, the state
lock, plan serials), which pools and clients exist, host keys, a catalogue of snapshots
and packs, the digest index, and the daemon's jobs, schedules, sites and instances.
SQLModel over SQLAlchemy, with Alembic migrations from the first schema on.

``models`` holds the tables, ``session`` engines, sessions and migrations; one query
module per table family holds every query: ``state`` (the control plane's resources,
serial, lock), ``pools``, ``clients``, ``catalogue`` (snapshots, packs), ``hostkeys``,
``digests`` (the digest index), ``queue`` (the job queue's transitions), ``jobs`` (its
history, for reports), ``schedules``, ``sites`` (maintenance), ``instances`` (the
daemons alive). This package is the only one that imports sqlalchemy, sqlmodel or
alembic (an import-linter contract); the rest of CoStor calls these functions by name.

The pool is the truth; everything here that describes pool contents (snapshots, packs)
can be rebuilt from the pool with ``costor pool reindex``.
"""
