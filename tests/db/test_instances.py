"""costor.db.instances on real SQLite or PostgreSQL: a serve instance registers, beats
and unregisters."""

from __future__ import annotations

from costor.db import instances
from costor.db.session import open_engine, session_scope


def test_register_beat_unregister(state_url: str) -> None:
    engine = open_engine(state_url)
    instances.register(engine, "host:1:abc", hostname="host", pid=1)
    instances.register(engine, "host:2:def", hostname="host", pid=2)
    with session_scope(engine, write=False) as session:
        [first, second] = sorted(instances.all_instances(session), key=lambda i: i.id)
    assert (first.id, first.hostname, first.pid, first.stopping) == ("host:1:abc", "host", 1, False)
    assert first.started_at == first.heartbeat_at
    instances.heartbeat(engine, "host:1:abc", stopping=True)
    with session_scope(engine, write=False) as session:
        beaten = {i.id: i for i in instances.all_instances(session)}["host:1:abc"]
    assert beaten.stopping is True and beaten.heartbeat_at >= first.heartbeat_at
    instances.unregister(engine, "host:1:abc")
    with session_scope(engine, write=False) as session:
        assert [i.id for i in instances.all_instances(session)] == ["host:2:def"]
