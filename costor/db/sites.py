"""Queries on the sites' maintenance mode as ``costor maintenance on|off`` set it (the
``site_state`` table)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from costor.db.models import SiteStateRow
from costor.db.session import session_scope
from costor.util.clock import utcnow


def paused_sites(engine: Engine) -> dict[str, str | None]:
    """Sites put in maintenance -> the reason given (None: none given)."""
    with session_scope(engine, write=False) as session:
        rows = session.exec(select(SiteStateRow).where(col(SiteStateRow.maintenance)))
        return {row.site: row.reason for row in rows}


def set_maintenance(engine: Engine, site: str, on: bool, reason: str | None) -> None:
    """Put ``site`` in maintenance (``on``, with ``reason``) or take it out."""
    with session_scope(engine) as session:
        row = session.get(SiteStateRow, site) or SiteStateRow(site=site, changed_at=utcnow())
        row.maintenance, row.reason, row.changed_at = on, reason if on else None, utcnow()
        session.add(row)
