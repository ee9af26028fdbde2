"""Queries on the SSH host keys recorded per client (the ``host_keys`` table): the key
pinned on first contact, recorded, moved with a renamed client, or forgotten."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from costor.db.models import HostKeyRow


def host_key_row(session: Session, client: str) -> HostKeyRow | None:
    """The host key recorded for ``client``, if any."""
    return session.get(HostKeyRow, client)


def record_host_key(
    session: Session,
    client: str,
    *,
    host: str,
    port: int,
    key: str,
    fingerprint: str,
    now: datetime,
) -> None:
    """Record ``key`` (an OpenSSH public key line) for ``client``, replacing any
    recorded before (in the caller's transaction)."""
    row = session.get(HostKeyRow, client) or HostKeyRow(
        client=client,
        host=host,
        port=port,
        key=key,
        fingerprint=fingerprint,
        recorded_at=now,
    )
    row.host, row.key, row.fingerprint = host, key, fingerprint
    row.port, row.recorded_at = port, now
    session.add(row)


def move_host_key(session: Session, old_client: str, new_client: str) -> None:
    """A renamed client keeps its host key: the row recorded under ``old_client``
    moves to ``new_client``, unless one is recorded under that name already."""
    old = session.get(HostKeyRow, old_client)
    if old is not None and session.get(HostKeyRow, new_client) is None:
        session.add(
            HostKeyRow(
                client=new_client,
                host=old.host,
                port=old.port,
                key=old.key,
                fingerprint=old.fingerprint,
                recorded_at=old.recorded_at,
            )
        )
        session.delete(old)
        session.flush()


def forget_host_key(session: Session, client: str) -> None:
    """Drop the host key recorded for ``client``, if any."""
    row = session.get(HostKeyRow, client)
    if row is not None:
        session.delete(row)
