"""The pool's parameters, bound to its key.

The identity file (``costor-pool.json``) is plain JSON anyone who can write the storage
can change, and it says how data is written: the cipher, the chunker, compression and
pack size. From format version 2 it carries ``params_tag``: HMAC-SHA256, under a key
derived from the master key (``MasterKey.derive(PURPOSE)``), of the canonical JSON of
every other field (:meth:`PoolIdentity.authenticated_bytes`). :func:`verify` checks it
each time a :class:`~costor.store.pool.Pool` is made from an identity and a key (every
open, a daemon's cached key included); a mismatch is :class:`PoolParametersTampered`
(exit 3) and nothing is read or written with those parameters.

Pools written before the tag (format version 1) still open, with one warning per pool
and process, until ``costor pool upgrade`` (:func:`upgrade`) writes the tag. Three
things keep an attacker from passing a tagged pool off as an old one, or an encrypted
pool as an unencrypted one:

* a version 2 identity without a tag is refused;
* the master key in each key slot written since (new pools, slots added later, slots
  re-wrapped by the upgrade) says ``params_bound``: opened through such a slot, an
  identity without a tag is refused, whatever its version;
* an untagged identity that says ``encryption = "none"`` is refused when the slot that
  opened was opened with a non-empty passphrase: unencrypted pools are opened with the
  empty passphrase, and whether a passphrase is given is decided by the inventory
  (``encryption`` there), never by the identity file.

An unencrypted pool has the tag too, but its key slot opens with the empty passphrase:
anyone can unwrap its master key and forge the tag, so it protects nothing there.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Any

from costor.errors import PoolError, PoolMismatch, PoolParametersTampered
from costor.store import crypto
from costor.store.backends.base import Backend
from costor.store.identity import (
    FORMAT_VERSION,
    IDENTITY_NAME,
    PoolIdentity,
    read_identity,
    read_key_slots,
)
from costor.util.log import get_logger

PURPOSE = b"costor pool parameters v1"
TAMPERED = (
    "its parameters do not match their authentication tag (costor-pool.json was changed, "
    "or is another pool's)"
)

_warned: set[tuple[str, str]] = set()  # (location, uuid) warned about in this process
_log = get_logger("store.pool")


def params_tag(master: crypto.MasterKey, identity: PoolIdentity) -> str:
    """The tag of an identity's parameters under the pool's key (hex)."""
    key = master.derive(PURPOSE)
    return hmac.new(key, identity.authenticated_bytes(), hashlib.sha256).hexdigest()


def bind(identity: PoolIdentity, master: crypto.MasterKey) -> PoolIdentity:
    """The identity at the current format version, with its tag."""
    current = replace(identity, version=FORMAT_VERSION, params_tag=None)
    return replace(current, params_tag=params_tag(master, current))


def check(identity: PoolIdentity, master: crypto.MasterKey, location: str) -> bool:
    """Raise :class:`PoolParametersTampered` unless the identity may be used with this
    key; True when it is tagged, False for an untagged (version 1) identity that may
    still be used until it is upgraded."""
    if identity.params_tag is not None:
        if not hmac.compare_digest(identity.params_tag, params_tag(master, identity)):
            raise PoolParametersTampered(location=location, reason=TAMPERED)
        return True
    if identity.version >= 2:
        raise PoolParametersTampered(
            location=location,
            reason=f"costor-pool.json (format version {identity.version}) has lost its "
            "parameter tag",
        )
    if master.params_bound:
        raise PoolParametersTampered(
            location=location,
            reason="costor-pool.json has no parameter tag, but the pool's key says it was "
            "given one (the file was replaced by an older or altered copy)",
        )
    if identity.encryption == "none" and master.with_passphrase:
        raise PoolParametersTampered(
            location=location,
            reason="costor-pool.json says the pool is unencrypted, but its key slot opens "
            "with a passphrase: it was created encrypted",
        )
    return False


def verify(identity: PoolIdentity, master: crypto.MasterKey, location: str) -> None:
    """:func:`check`, and warn (once per pool and process) about an untagged pool."""
    if check(identity, master, location) or (location, identity.uuid) in _warned:
        return
    _warned.add((location, identity.uuid))
    _log.warning(
        "pool %s: costor-pool.json has no parameter tag (format version %d): its cipher, "
        "chunker, compression and pack size are not protected against changes; run "
        "`costor pool upgrade` for this pool",
        location,
        identity.version,
    )


@dataclass(frozen=True)
class UpgradeResult:
    """What :func:`upgrade` did: ``tagged``, whether it wrote the tag now (False: the
    pool had one); ``slots_rebound``, the slots re-wrapped as bound to the tag;
    ``slots_other``, slots this passphrase does not open (other passphrases: each is
    re-wrapped by an upgrade run with it)."""

    uuid: str
    from_version: int
    to_version: int
    tagged: bool
    slots_rebound: int
    slots_other: int

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "tagged": self.tagged,
            "slots_rebound": self.slots_rebound,
            "slots_other": self.slots_other,
        }


def upgrade(
    backend: Backend, passphrase: str | None, *, expected_uuid: str | None = None
) -> UpgradeResult:
    """Write the parameter tag into an old pool's identity file, then re-wrap each key
    slot this passphrase opens as bound to it (identity first: killed between the two,
    the pool is tagged and the next run re-wraps the slots). A tagged pool is checked,
    and only its slots are re-wrapped. Nothing else of the pool is touched."""
    identity = read_identity(backend)
    if expected_uuid and identity.uuid != expected_uuid:
        raise PoolMismatch(location=backend.location, found=identity.uuid, expected=expected_uuid)
    slots = read_key_slots(backend)
    if not slots:
        raise PoolError(message=f"pool at {backend.location} has no key slots")
    secret = passphrase or ""
    master = crypto.unlock(slots, secret, identity.uuid, backend.location)
    tagged = not check(identity, master, backend.location)
    bound = replace(master, params_bound=True)
    if tagged:
        backend.put(IDENTITY_NAME, bind(identity, bound).to_bytes())
    rebound = other = 0
    for name, slot_bytes in slots:
        try:
            opened = crypto.open_key_slot(slot_bytes, secret, identity.uuid)
        except (
            crypto.AuthenticationFailed,
            crypto.SlotOverCap,
            PoolError,
            ValueError,
            KeyError,
            TypeError,
        ):
            other += 1
            continue
        if not opened.params_bound:
            backend.put(name, crypto.rewrap_key_slot(slot_bytes, bound, secret, identity.uuid))
            rebound += 1
    return UpgradeResult(identity.uuid, identity.version, FORMAT_VERSION, tagged, rebound, other)
