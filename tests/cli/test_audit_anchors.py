"""The audit log's head anchored in the pools (docs/audit.md, "Anchors"): someone who
can write the state database but not the pool's key cannot cut records from the log's
end, or rewrite it, without `costor audit verify` seeing it."""

from __future__ import annotations

from support.fixtures import Site

from costor.store.anchor import ANCHOR_PREFIX


def _verify(site: Site) -> tuple[int, dict[str, object]]:
    result = site.cli("audit", "verify", "--json")
    return result.code, result.json()


def test_a_backup_anchors_the_head_and_a_cut_tail_is_caught(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    anchors = list((applied.pool_path / ANCHOR_PREFIX).iterdir())
    assert len(anchors) == 1
    code, report = _verify(applied)
    assert code == 0 and report["intact"], report
    assert report["anchors"][0]["pool"] == "main" and report["anchors"][0]["record"]

    # Cut the tail consistently: the last records and the head moved back with them.
    anchored = report["anchors"][0]["record"]
    rows = applied.sql("SELECT id, hash FROM audit_records WHERE id < :id ORDER BY id", id=anchored)
    last_id, last_hash = rows[-1]
    applied.sql("DELETE FROM audit_records WHERE id >= :id", id=anchored)
    applied.sql(
        "UPDATE audit_head SET last_id = :id, last_hash = :hash", id=last_id, hash=last_hash
    )
    code, report = _verify(applied)
    assert code == 3, report
    broken = report["broken"]
    assert broken["kind"] == "truncated" and broken["record"] == anchored
    assert "pool main's anchor" in broken["reason"]
    human = applied.cli("audit", "verify")
    assert human.code == 3 and "records were cut from its end" in human.stdout


def test_anchors_are_few_and_follow_the_head(applied: Site) -> None:
    for _ in range(5):
        assert applied.cli("backup", "alpha").code == 0
    assert applied.cli("check").code == 0
    assert len(list((applied.pool_path / ANCHOR_PREFIX).iterdir())) == 3  # the newest
    code, report = _verify(applied)
    assert code == 0, report
    head = report["head"]
    assert isinstance(head, dict)
    assert report["anchors"][0]["record"] == head["record"]  # written after the check's record


def test_an_emptied_log_is_caught(applied: Site) -> None:
    assert applied.cli("backup", "alpha").code == 0
    applied.sql("DELETE FROM audit_records")
    applied.sql("DELETE FROM audit_head")
    code, report = _verify(applied)
    assert code == 3, report
    assert report["broken"]["kind"] == "truncated"
    assert "it was emptied" in report["broken"]["reason"]


def test_a_new_state_over_the_pool_raises_no_false_alarm(applied: Site) -> None:
    """Disaster recovery: a new state database, the old pool with the old chain's
    anchors. The new chain is another chain: its anchors are its own."""
    assert applied.cli("backup", "alpha").code == 0
    applied.lose_state()
    assert applied.cli("apply", "--auto-approve").code == 0
    code, report = _verify(applied)
    assert code == 0, report
    assert report["anchors"][0]["record"] is None  # none of this chain yet
    assert applied.cli("backup", "alpha").code == 0
    code, report = _verify(applied)
    assert code == 0 and report["anchors"][0]["record"], report
