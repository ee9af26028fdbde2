"""Hosts reached over SSH: how to reach a client, its pinned host key, and the digest
index that lets one host's content count for another's.

Host keys: trust on first use, then pinned. ``costor apply`` records the key a host
presents the first time (the plan shows its fingerprint); every later connection —
plan, backup — requires that key. A key pinned in the inventory (``ssh.host_key``) wins
over the recorded one. ``costor hostkey accept CLIENT`` records the key presented now,
after the administrator checked it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costor.config import resolve_secret
from costor.db import digests as db_digests
from costor.db import hostkeys as db_hostkeys
from costor.db.session import Session, session_scope
from costor.db.state import bump_serial, ensure_meta, state_lock
from costor.errors import CostorError, HostKeyUnknown, UsageError
from costor.ops.context import Context
from costor.protocol import Bloom, bloom_add, bloom_filter
from costor.util.clock import utcnow

if TYPE_CHECKING:
    from costor.config.model import ClientConfig
    from costor.transport.ssh import HostKey, Target

# costor.transport.ssh (asyncssh) is imported inside the functions that reach a host or
# make a host key, never here: a local-only command does not import the SSH stack at all
# (tests/cli/test_quiet_local.py).


def target(ctx: Context, client: ClientConfig) -> Target:
    from costor.transport.ssh import Target  # SSH only: see the top

    ssh = client.ssh
    assert client.host is not None  # the model requires a host for ssh
    key = resolve_secret(ssh.key, f"clients.{client.name}.ssh.key") if ssh and ssh.key else None
    return Target(
        client=client.name,
        host=client.host,
        port=ssh.port if ssh else 22,
        user=ssh.user if ssh else None,
        private_key=key,
        jump=ssh.jump if ssh else None,
        sudo=ssh.sudo if ssh else False,
        python=ssh.python if ssh else "python3",
    )


def recorded_host_key(ctx: Context, name: str) -> HostKey | None:
    from costor.transport.ssh import HostKey  # SSH only: see the top

    with session_scope(ctx.engine, write=False) as session:
        row = db_hostkeys.host_key_row(session, name)
        return HostKey(row.key, row.fingerprint) if row else None


def trusted_host_key(ctx: Context, client: ClientConfig) -> HostKey:
    """The key a connection to ``client`` must see: pinned, else recorded."""
    from costor.transport.ssh import HostKey  # SSH only: see the top

    if client.ssh is not None and client.ssh.host_key:
        return HostKey.parse(client.ssh.host_key)
    recorded = recorded_host_key(ctx, client.name)
    if recorded is None:
        raise HostKeyUnknown(client=client.name, host=client.host)
    return recorded


def record_host_key(session: Session, client: ClientConfig, key: HostKey) -> None:
    """Record ``key`` for ``client`` (in the caller's transaction)."""
    db_hostkeys.record_host_key(
        session,
        client.name,
        host=client.host or "",
        port=client.ssh.port if client.ssh else 22,
        key=key.openssh,
        fingerprint=key.fingerprint,
        now=utcnow(),
    )


def forget_host_key(session: Session, name: str) -> None:
    db_hostkeys.forget_host_key(session, name)


# --- whole-file digests ------------------------------------------------------------------------


class StateDigestIndex:
    """:class:`costor.store.backup.stream.DigestIndex` over the ``content_digests`` table of one
    pool. New digests are kept in memory and written by :meth:`save`, after the
    snapshot: a backup that fails records nothing it did not finish."""

    def __init__(self, ctx: Context, pool_uuid: str) -> None:
        self.ctx = ctx
        self.pool_uuid = pool_uuid
        self.new: dict[str, tuple[list[bytes], int, bytes | None]] = {}
        # The pool's digests, once :meth:`digests` has read them, or the Bloom filter of
        # them :meth:`bloom` gave: a digest not among them is answered without a query (a
        # changed file's new digest usually is not; a query per file cost ~1 ms each).
        self._known: set[str] | None = None
        self._bloom: Bloom | None = None

    def bloom(self) -> bytes:
        """The Bloom filter of the pool's digests (:func:`bloom_filter`), for the helper.
        Kept in the state directory (``cache/POOL_UUID/bloom``) with the number of rows it
        was made for, and made again when that number changed: reading and hashing every
        digest cost ~60 ms for 20,000 of them, counting them ~2 ms. A filter that missed a
        digest (rows replaced, a count that came out the same) costs only that content
        being sent again; one with digests no longer in the table, a query that says so."""
        count = self._count()
        cached = _read_bloom(self._bloom_path())
        if cached is not None and cached[0] == count:
            payload = cached[2]
        else:
            payload = bloom_filter(self.digests())
            _write_bloom(self._bloom_path(), count, count, payload)
        self._bloom = Bloom(payload)
        return payload

    def _bloom_path(self) -> Path:
        return Path(self.ctx.inventory.costor.state_dir) / "cache" / self.pool_uuid / "bloom"

    def _count(self) -> int:
        with session_scope(self.ctx.engine, write=False) as session:
            return db_digests.count_digests(session, self.pool_uuid)

    def digests(self) -> list[bytes]:
        with session_scope(self.ctx.engine, write=False) as session:
            known = db_digests.pool_digests(session, self.pool_uuid)
        self._known = set(known)
        return [bytes.fromhex(digest) for digest in known]

    def lookup(self, digest: bytes) -> tuple[list[bytes], int] | None:
        if digest.hex() in self.new:
            content, size, _blocks = self.new[digest.hex()]
            return content, size
        if self._known is not None and digest.hex() not in self._known:
            return None
        if self._known is None and self._bloom is not None and not self._bloom.may_contain(digest):
            return None
        with session_scope(self.ctx.engine, write=False) as session:
            row = db_digests.digest_row(session, self.pool_uuid, digest.hex())
            if row is None:
                return None
            return _split(row.content), row.size

    def blocks(self, content: list[bytes]) -> bytes | None:
        key = content_key(content)
        with session_scope(self.ctx.engine, write=False) as session:
            blocks = db_digests.content_blocks(session, self.pool_uuid, key)
        return base64.b64decode(blocks) if blocks else None

    def record(self, digest: bytes, content: list[bytes], size: int, blocks: bytes | None) -> None:
        self.new[digest.hex()] = (content, size, blocks)

    def save(self) -> None:
        if not self.new:
            return
        rows = [
            {
                "pool_uuid": self.pool_uuid,
                "digest": digest,
                "size": size,
                "content": "".join(blob.hex() for blob in content),
                "content_key": content_key(content),
                "blocks": base64.b64encode(blocks).decode() if blocks else None,
            }
            for digest, (content, size, blocks) in self.new.items()
        ]
        with session_scope(self.ctx.engine) as session:
            db_digests.replace_digests(session, self.pool_uuid, list(self.new), rows)
        self._update_bloom([bytes.fromhex(digest) for digest in self.new])
        self.new.clear()

    def _update_bloom(self, added: list[bytes]) -> None:
        """Add this backup's digests to the kept filter, if it was current before them
        (else, or once it holds twice the digests it was sized for, the next backup makes
        it again)."""
        path = self._bloom_path()
        cached = _read_bloom(path)
        if cached is None:
            return
        count, sized_for, payload = cached
        now = self._count()
        if now > 2 * sized_for or now - count > len(added) or now < count:
            path.unlink(missing_ok=True)  # another backup added some too: made anew
            return
        _write_bloom(path, now, sized_for, bloom_add(payload, added))


def content_key(content: list[bytes]) -> str:
    return hashlib.sha256(b"".join(content)).hexdigest()


def _split(text: str) -> list[bytes]:
    return [bytes.fromhex(text[i : i + 64]) for i in range(0, len(text), 64)]


def _read_bloom(path: Path) -> tuple[int, int, bytes] | None:
    """A kept Bloom filter: (rows it holds, rows it was sized for, filter); a cache, so
    any doubt is None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < 20:
        return None
    count, sized_for = struct.unpack(">QQ", data[:16])
    return count, sized_for, data[16:]


def _write_bloom(path: Path, count: int, sized_for: int, payload: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".bloom.{os.getpid()}.tmp")
        temporary.write_bytes(struct.pack(">QQ", count, sized_for) + payload)
        temporary.replace(path)
    except OSError:
        pass  # a cache: the next backup reads the digests again


# --- observing host keys at plan time -------------------------------------------------------

PROBE_PARALLEL = 16  # hosts asked for their key at once


def probe_host_keys(
    ctx: Context, clients: list[ClientConfig], recorded_as: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """For each SSH client: the key its host presents now, and what is recorded or
    pinned — the facts the plan decides host keys on. Unreachable is a fact, not an
    error: the plan says so and goes on.

    ``recorded_as`` maps a client renamed by ``[[moved]]`` (not applied yet) to the name
    the state still records it, and its host key, under: a moved client keeps its key,
    so it is compared with that one, not trusted anew on first use."""
    names = recorded_as or {}
    ssh_clients = [c for c in clients if c.transport == "ssh"]
    if not ssh_clients:
        return {}  # a local-only inventory does not import the SSH stack at all

    from costor.transport.ssh import HostKey, Remote  # SSH only: see the top

    def probe(client: ClientConfig) -> tuple[str, dict[str, Any]]:
        facts: dict[str, Any] = {"host": client.host}
        recorded = recorded_host_key(ctx, names.get(client.name, client.name))
        facts["recorded"] = recorded.fingerprint if recorded else None
        if client.ssh is not None and client.ssh.host_key:
            facts["pinned"] = HostKey.parse(client.ssh.host_key).fingerprint
        try:
            with Remote(target(ctx, client)) as remote:
                presented = remote.fetch_host_key()
            facts["presented"] = presented.fingerprint
            facts["presented_key"] = presented.openssh
        except CostorError as error:
            facts["presented"] = None
            facts["error"] = str(error)
        return client.name, facts

    with ThreadPoolExecutor(min(PROBE_PARALLEL, len(ssh_clients))) as executor:
        return dict(executor.map(probe, ssh_clients))


def accept_host_key(ctx: Context, name: str, *, lock_timeout: float = 0.0) -> dict[str, Any]:
    """Record the key ``name``'s host presents now (under the state lock; a control-
    plane change, so saved plans made before it are stale)."""
    from costor.transport.ssh import Remote  # SSH only: see the top

    client = ctx.client_config(name)
    if client.transport != "ssh":
        raise UsageError(message=f"client {name} is not reached over SSH")
    previous = recorded_host_key(ctx, name)
    with Remote(target(ctx, client)) as remote:
        presented = remote.fetch_host_key()
    ensure_meta(ctx.engine)
    with (
        state_lock(ctx.engine, f"hostkey accept {name}", timeout=lock_timeout),
        session_scope(ctx.engine) as session,
    ):
        record_host_key(session, client, presented)
        bump_serial(session)
    return {
        "client": name,
        "host": client.host,
        "fingerprint": presented.fingerprint,
        "key": presented.openssh,
        "previous": previous.fingerprint if previous else None,
    }


def show_host_key(ctx: Context, name: str) -> dict[str, Any]:
    client = ctx.client_config(name)
    facts = probe_host_keys(ctx, [client]).get(name, {})
    return {
        "client": name,
        "host": client.host,
        "recorded": facts.get("recorded"),
        "pinned": facts.get("pinned"),
        "presented": facts.get("presented"),
        "error": facts.get("error"),
    }
