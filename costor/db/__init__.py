"""The state database: the control plane's state (each resource as applied, the state
lock, plan serials), which pools and clients exist, host keys, a catalogue of snapshots
and packs, the digest index, and the daemon's jobs, schedules, sites and instances.
SQLModel over SQLAlchemy, with Alembic migrations from the first schema on; query
modules per table family (``catalogue``, ``jobs``; more to come: issue 18).

The pool is the truth; everything here that describes pool contents (snapshots, packs)
can be rebuilt from the pool with ``costor pool reindex``.
"""
