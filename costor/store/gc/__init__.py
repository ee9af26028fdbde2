"""Garbage collection: ``prune`` deletes what no snapshot references, in two phases
(``condemned`` records, then deletion once no backup that could still use a pack runs);
``leases`` are how backups and restores announce themselves to it."""
