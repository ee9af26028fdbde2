"""Tables. Column names are part of the upgrade path: change them only with a migration."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel


class PoolRow(SQLModel, table=True):
    __tablename__ = "pools"

    name: str = Field(primary_key=True)
    uuid: str = Field(index=True)
    backend: str
    location: str
    encryption: str
    created_at: datetime
    updated_at: datetime
    # New data written by backups, before and after compression: the pool's ratio.
    bytes_raw: int = 0
    bytes_stored: int = 0


class ClientRow(SQLModel, table=True):
    __tablename__ = "clients"

    name: str = Field(primary_key=True)
    pool: str
    site: str | None = None
    transport: str
    config_digest: str
    created_at: datetime
    updated_at: datetime


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "snapshots"

    id: str = Field(primary_key=True)
    pool_uuid: str = Field(index=True)
    client: str = Field(index=True)
    time: str
    tree: str
    paths: str  # JSON list
    counters: str  # JSON object
    duration_s: float = 0.0


class PackRow(SQLModel, table=True):
    __tablename__ = "packs"

    pool_uuid: str = Field(primary_key=True)
    pack_id: str = Field(primary_key=True)
    size: int
    last_verified: datetime | None = None
