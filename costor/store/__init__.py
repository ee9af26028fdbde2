"""The pool engine: a library that stores deduplicated, compressed, encrypted snapshots in
a backend. It knows nothing of the inventory, the database, SSH or HTTP.

Modules, bottom up: ``backends`` (raw named objects) → ``crypto`` (keys, AEAD, blob ids)
→ ``pack`` (blobs grouped into packs with an encrypted trailer) → ``index`` (blob →
pack location) → ``identity`` (the identity file and key slots, read before the key) →
``pool`` (keys, index, trees, snapshots) → ``tree`` and ``snapshot`` (metadata
encodings) → the rooms, by the way data flows: ``backup/`` (the
local walk and the host stream into the pool), ``restore/`` (to a directory, to an
archive), ``gc/`` (prune, condemned packs, leases); and ``checker`` (verification),
``diff`` (two snapshots), ``copy`` (a pool to another backend), ``retention`` (which
snapshots a policy keeps), ``compressibility`` (when zstd is skipped).
"""
