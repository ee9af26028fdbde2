"""One argon2id derivation at a time in this process.

Measured here (cryptography 50.0.2, OpenSSL's threaded argon2): two derivations started
at once from two Python threads never return — a deadlock, found when ``backup --all``
opened two pools in parallel. One at a time they take ~0.17 s each (64 MiB, 3 passes,
4 lanes) and a second thread never made them faster anyway (memory-bound; the lanes
already use the cores). minio/madmin-go holds a package-level mutex around argon2 for
the same reason of cost. Every argon2 call in CoStor goes through :data:`LOCK`.
"""

from __future__ import annotations

import threading

LOCK = threading.Lock()
