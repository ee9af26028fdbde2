"""The web UI's audit pages (costor/server/ui/__init__.py)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
