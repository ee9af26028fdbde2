"""A pool's key slots: list them, add one, remove one (passphrase rotation).

Each key slot wraps the pool's master key for one passphrase (docs/format.md). To rotate
a passphrase: add a slot for the new one, make the inventory's passphrase the new one,
then remove the old slot. Removing a slot deletes one object; the data is untouched.

Two refusals keep a pool openable: the last slot is never removed, and the only slot
the inventory's passphrase opens is removed only with ``force`` (the inventory must then
change before the pool opens again). Removing a slot needs a passphrase that opens the
pool: the inventory's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costor.errors import (
    AmbiguousKeySlot,
    KeySlotInUse,
    KeySlotNotFound,
    PoolMismatch,
    UsageError,
    WriteNotVerified,
    WrongPassphrase,
)
from costor.ops.audit import audited
from costor.store import crypto
from costor.store.pool import KEYS_PREFIX, read_identity, read_key_slots, remove_key_slot

if TYPE_CHECKING:
    from costor.ops.context import Context
    from costor.store.backends.base import Backend
    from costor.store.pool import PoolIdentity


@dataclass(frozen=True)
class KeySlot:
    id: str
    created: str | None  # None: the slot does not say (written before it was recorded)
    kdf: str
    label: str
    opens_with_inventory_passphrase: bool
    readable: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "kdf": self.kdf,
            "label": self.label,
            "opens_with_inventory_passphrase": self.opens_with_inventory_passphrase,
            "readable": self.readable,
        }


@dataclass(frozen=True)
class KeyList:
    pool: str
    uuid: str
    location: str
    slots: list[KeySlot]

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "uuid": self.uuid,
            "location": self.location,
            "slots": [slot.to_json() for slot in self.slots],
        }


@dataclass(frozen=True)
class KeyAdded:
    pool: str
    uuid: str
    slot: KeySlot

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "uuid": self.uuid,
            "key_slot": KEYS_PREFIX + self.slot.id,  # the object's name (as before)
            **self.slot.to_json(),
        }


@dataclass(frozen=True)
class KeyRemoved:
    pool: str
    uuid: str
    id: str
    label: str
    remaining: int
    forced: bool
    inventory_passphrase_opens: bool  # False after a forced removal of its only slot

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "uuid": self.uuid,
            "id": self.id,
            "label": self.label,
            "remaining": self.remaining,
            "forced": self.forced,
            "inventory_passphrase_opens": self.inventory_passphrase_opens,
        }


def list_keys(ctx: Context, pool: str) -> KeyList:
    """Every key slot of ``pool`` and whether the inventory's passphrase opens it. Needs
    no working passphrase: a wrong one shows as no slot opening."""
    backend, identity = _locate(ctx, pool)
    slots = _slots(backend, identity, ctx.passphrase(pool) or "")
    return KeyList(pool, identity.uuid, backend.location, [slot for _name, slot in slots])


def add_key(ctx: Context, pool: str, passphrase: str, *, kdf: str, label: str = "") -> KeyAdded:
    """A new slot for ``passphrase``, read back and opened before this returns: a slot
    that did not reach the storage intact is found now, not after the old one is gone.
    Recorded in the audit log first: a slot is a way into the pool (costor.ops.audit)."""
    if not passphrase:
        raise UsageError(message="the new passphrase is empty")
    crypto.check_label(label)
    detail = {"label": label, "kdf": kdf}
    with audited(ctx, "pool.add-key", f"pool:{pool}", detail=detail, before=True) as noted:
        added = _add_key(ctx, pool, passphrase, kdf=kdf, label=label)
        noted["slot"] = added.slot.id
    return added


def _add_key(ctx: Context, pool: str, passphrase: str, *, kdf: str, label: str) -> KeyAdded:
    opened = ctx.open_pool(pool, load_index=False)
    name = opened.add_key_slot(passphrase, kdf, label)
    stored = opened.backend.get(name)
    if not crypto.slot_opens(stored, passphrase, opened.uuid):
        raise WriteNotVerified(
            name=name, attempts=1, reason="the slot read back does not open with the passphrase"
        )
    info = crypto.KeySlotInfo.parse(name, stored)
    same = passphrase == (ctx.passphrase(pool) or "")
    return KeyAdded(pool, opened.uuid, _view(info, same))


def remove_key(ctx: Context, pool: str, slot: str, *, force: bool = False) -> KeyRemoved:
    """Remove the slot ``slot`` (its id, a unique prefix of it, or ``keys/<id>``);
    recorded in the audit log first (costor.ops.audit)."""
    detail = {"slot": slot, "force": force}
    with audited(ctx, "pool.remove-key", f"pool:{pool}", detail=detail, before=True) as noted:
        removed = _remove_key(ctx, pool, slot, force=force)
        noted.update(slot=removed.id, remaining=removed.remaining)
    return removed


def _remove_key(ctx: Context, pool: str, slot: str, *, force: bool) -> KeyRemoved:
    backend, identity = _locate(ctx, pool)
    passphrase = ctx.passphrase(pool) or ""
    slots = _slots(backend, identity, passphrase)
    name = _resolve(slot, [n for n, _s in slots], backend.location)
    opening = {n for n, s in slots if s.opens_with_inventory_passphrase}
    if not opening:
        raise WrongPassphrase(location=backend.location)
    target = dict(slots)[name]
    if opening == {name} and not force:
        raise KeySlotInUse(slot=target.id, pool=pool)
    remaining = remove_key_slot(backend, name)  # refuses the last slot
    return KeyRemoved(
        pool=pool,
        uuid=identity.uuid,
        id=target.id,
        label=target.label,
        remaining=remaining,
        forced=force,
        inventory_passphrase_opens=bool(opening - {name}),
    )


def _locate(ctx: Context, pool: str) -> tuple[Backend, PoolIdentity]:
    """The pool's storage and identity; its UUID must be the one recorded at apply."""
    backend = ctx.backend(pool)
    identity = read_identity(backend)
    expected = ctx.recorded_pool_uuid(pool)
    if expected is not None and identity.uuid != expected:
        raise PoolMismatch(location=backend.location, found=identity.uuid, expected=expected)
    return backend, identity


def _slots(backend: Backend, identity: PoolIdentity, passphrase: str) -> list[tuple[str, KeySlot]]:
    result = []
    for name, data in read_key_slots(backend):
        info = crypto.KeySlotInfo.parse(name, data)
        opens = info.readable and crypto.slot_opens(data, passphrase, identity.uuid)
        result.append((name, _view(info, opens)))
    return result


def _view(info: crypto.KeySlotInfo, opens: bool) -> KeySlot:
    return KeySlot(info.id, info.created, info.kdf, info.label, opens, info.readable)


def _resolve(ref: str, names: list[str], location: str) -> str:
    wanted = ref.strip().removeprefix(KEYS_PREFIX).lower()
    if not wanted:
        raise KeySlotNotFound(slot=ref, location=location)
    exact = KEYS_PREFIX + wanted
    if exact in names:
        return exact
    matches = [n for n in names if n.removeprefix(KEYS_PREFIX).startswith(wanted)]
    if not matches:
        raise KeySlotNotFound(slot=ref, location=location)
    if len(matches) > 1:
        raise AmbiguousKeySlot(slot=ref, count=len(matches), location=location)
    return matches[0]
