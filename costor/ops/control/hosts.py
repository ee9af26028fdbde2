"""Host keys in the control plane: record or forget one in apply's transaction, observe
what each host presents at plan time, and ``costor hostkey accept`` / ``show``.

Host keys are trusted on first use, then pinned (:mod:`costor.ops.backup.host` says how
a connection uses them). ``costor hostkey accept CLIENT`` records the key presented
now, after the administrator checked it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costor.db import hostkeys as db_hostkeys
from costor.db.session import Session, session_scope
from costor.db.state import bump_serial, ensure_meta, state_lock
from costor.errors import CostorError, HostKeyNotExpected, UsageError
from costor.ops.audit import audited
from costor.ops.backup.host import recorded_host_key, target
from costor.ops.context import Context
from costor.util.clock import utcnow

if TYPE_CHECKING:
    from costor.config.model import ClientConfig
    from costor.transport.ssh import HostKey

# costor.transport.ssh (asyncssh) is imported inside the functions that reach a host,
# never here: a local-only command does not import the SSH stack at all
# (tests/cli/test_quiet_local.py).


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


@dataclass(frozen=True)
class HostKeyAccepted:
    """``costor hostkey accept``: the key now recorded for a client, and the one before."""

    client: str
    host: str | None
    fingerprint: str
    key: str
    previous: str | None  # the fingerprint recorded before, if any

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "host": self.host,
            "fingerprint": self.fingerprint,
            "key": self.key,
            "previous": self.previous,
        }


@dataclass(frozen=True)
class HostKeyReport:
    """``costor hostkey show``: a client's recorded, pinned and presented keys
    (fingerprints), or why the host could not be asked."""

    client: str
    host: str | None
    recorded: str | None
    pinned: str | None
    presented: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "host": self.host,
            "recorded": self.recorded,
            "pinned": self.pinned,
            "presented": self.presented,
            "error": self.error,
        }


def accept_host_key(
    ctx: Context, name: str, *, lock_timeout: float = 0.0, expected: str | None = None
) -> HostKeyAccepted:
    """Record the key ``name``'s host presents now (under the state lock; a control-
    plane change, so saved plans made before it are stale). With ``expected`` (a
    fingerprint, ``SHA256:…``, as ``ssh-keygen -l`` prints it), only if the host presents
    that key: anything else is refused and nothing is recorded. Recorded in the audit
    log first: it decides which host is trusted (costor.ops.audit)."""
    with audited(
        ctx, "hostkey.accept", f"client:{name}", detail={"expected": expected}, before=True
    ) as noted:
        accepted = _accept(ctx, name, lock_timeout=lock_timeout, expected=expected)
        noted.update(fingerprint=accepted.fingerprint, previous=accepted.previous)
    return accepted


def _accept(
    ctx: Context, name: str, *, lock_timeout: float, expected: str | None
) -> HostKeyAccepted:
    from costor.transport.ssh import Remote  # SSH only: see the top

    client = ctx.client_config(name)
    if client.transport != "ssh":
        raise UsageError(message=f"client {name} is not reached over SSH")
    previous = recorded_host_key(ctx, name)
    with Remote(target(ctx, client)) as remote:
        presented = remote.fetch_host_key()
    if expected is not None and presented.fingerprint != expected.strip():
        raise HostKeyNotExpected(
            host=client.host,
            client=name,
            presented=presented.fingerprint,
            expected=expected.strip(),
        )
    ensure_meta(ctx.engine)
    with (
        state_lock(ctx.engine, f"hostkey accept {name}", timeout=lock_timeout),
        session_scope(ctx.engine) as session,
    ):
        record_host_key(session, client, presented)
        bump_serial(session)
    return HostKeyAccepted(
        client=name,
        host=client.host,
        fingerprint=presented.fingerprint,
        key=presented.openssh,
        previous=previous.fingerprint if previous else None,
    )


def show_host_key(ctx: Context, name: str) -> HostKeyReport:
    client = ctx.client_config(name)
    facts = probe_host_keys(ctx, [client]).get(name, {})
    return HostKeyReport(
        client=name,
        host=client.host,
        recorded=facts.get("recorded"),
        pinned=facts.get("pinned"),
        presented=facts.get("presented"),
        error=facts.get("error"),
    )
