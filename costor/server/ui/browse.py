"""The web UI's browse pages (costor/server/ui/__init__.py)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
