"""The clock every layer reads: now, aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, aware, in UTC (SQLModel stores aware datetimes as UTC)."""
    return datetime.now(UTC)
