"""The state database: which pools and clients exist, and a catalogue of snapshots and
packs. SQLModel over SQLAlchemy, with Alembic migrations from the first schema on.

The pool is the truth; everything here that describes pool contents (snapshots, packs)
can be rebuilt from the pool with ``costor pool reindex``.
"""
