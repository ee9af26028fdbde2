"""costor.db.sites on real SQLite or PostgreSQL: maintenance mode set and cleared."""

from __future__ import annotations

from costor.db import sites
from costor.db.session import open_engine


def test_maintenance_on_and_off(state_url: str) -> None:
    engine = open_engine(state_url)
    assert sites.paused_sites(engine) == {}
    sites.set_maintenance(engine, "hq", True, "disk swap")
    sites.set_maintenance(engine, "dr", True, None)
    assert sites.paused_sites(engine) == {"hq": "disk swap", "dr": None}
    sites.set_maintenance(engine, "hq", False, "ignored when off")
    assert sites.paused_sites(engine) == {"dr": None}
