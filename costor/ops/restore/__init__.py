"""Reading snapshots back: finding them across pools, listing and comparing them, restoring
them to a directory or an archive."""
