"""costor pool upgrade: bind an old pool's parameters to its key (docs/format.md,
"Parameter tag"; docs/pools.md, "Upgrading a pool").

A pool made before format version 2 has no tag over its identity file's parameters. It
still opens, with a warning, until this runs once with the inventory's passphrase: it
writes the tag and re-wraps the key slots that passphrase opens so that their key says
"the parameters are tagged" (an identity rolled back to the old format is then refused).
Slots of other passphrases are counted; an upgrade run with each of them re-wraps them.

The upgrade is explicit, not done by whichever command opens the pool first: opening is
otherwise read-only (``check``, ``restore``, ``plan`` write nothing to the storage, and
may run with read-only credentials or against a copy), and the tag blesses whatever the
identity file says at that moment, so the administrator decides when, after making sure
the file is the pool's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costor.ops.audit import audited
from costor.store import pool_params

if TYPE_CHECKING:
    from costor.ops.context import Context


@dataclass(frozen=True)
class PoolUpgradeOutcome:
    """What ``costor pool upgrade`` did to one pool."""

    pool: str
    location: str
    result: pool_params.UpgradeResult

    @property
    def changed(self) -> bool:
        return self.result.tagged or self.result.slots_rebound > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "location": self.location,
            "changed": self.changed,
            **self.result.to_json(),
        }


def upgrade_pool(ctx: Context, pool: str) -> PoolUpgradeOutcome:
    """Upgrade the declared pool ``pool`` with the inventory's passphrase; its UUID must be
    the one recorded at apply. Running it again changes nothing. Recorded in the audit
    log before the pool is touched (costor.ops.audit)."""
    with audited(ctx, "pool.upgrade", f"pool:{pool}", before=True):
        backend = ctx.backend(pool)
        result = pool_params.upgrade(
            backend, ctx.passphrase(pool), expected_uuid=ctx.recorded_pool_uuid(pool)
        )
    return PoolUpgradeOutcome(pool=pool, location=backend.location, result=result)
