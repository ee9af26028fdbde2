"""``plan``, ``apply``, ``show`` as a pipeline drives them: detailed exit codes, saved
plans that apply exactly and refuse when stale, the confirmation prompt, the state lock,
``--target``, and the ``db`` verbs. Real state databases (SQLite, or PostgreSQL in the
suite's PostgreSQL pass), real pools, the real CLI in-process or as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.fixtures import Site, run_in_pty

USERS = """
[groups.ops]
roles = ["operator"]

[users.alice]
groups = ["ops"]
password = { env = "COSTOR_TEST_ALICE" }
"""


@pytest.fixture(autouse=True)
def _alice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTOR_TEST_ALICE", "alice's password 1")


def append(site: Site, text: str) -> None:
    site.inventory.write_text(site.inventory.read_text() + text)


def replace(site: Site, old: str, new: str) -> None:
    text = site.inventory.read_text()
    assert old in text, old
    site.inventory.write_text(text.replace(old, new))


def test_pipeline_validate_plan_save_apply_then_no_changes(site: Site, tmp_path: Path) -> None:
    """What a CI job runs: validate → plan --detailed-exitcode → plan --out → apply
    PLANFILE → plan shows 0 changes."""
    append(site, USERS)
    assert site.cli("validate").code == 0
    planned = site.cli("plan", "--detailed-exitcode")
    assert planned.code == 2, planned.stderr
    assert "+ pool.main" in planned.stdout and "+ user.alice" in planned.stdout
    planfile = tmp_path / "ci.plan"
    saved = site.cli("plan", "--out", str(planfile), "--json")
    assert saved.code == 0, saved.stderr
    document = saved.json()
    assert document["format_version"] == "1.0"
    assert document["summary"] == {"add": 5, "change": 0, "remove": 0, "forget": 0, "move": 0}
    for change in document["resource_changes"]:
        assert set(change) >= {"address", "type", "name", "change", "reason"}
        assert change["change"]["actions"] == ["create"] and change["change"]["before"] is None
    assert oct(planfile.stat().st_mode & 0o777) == "0o600"

    shown = site.cli("show", str(planfile), "--json")
    assert shown.code == 0 and shown.json() == document
    human = site.cli("show", str(planfile))
    assert "+ client.alpha" in human.stdout and "Plan: 5 to add" in human.stdout

    applied = site.run_process("apply", str(planfile), "--json")  # no TTY, no prompt
    assert applied.code == 0, applied.stderr
    report = json.loads(applied.stdout)
    # Dependencies first: a client after its pool, a user after its group.
    assert [c["address"] for c in report["applied"]] == [
        "site.hq",
        "group.ops",
        "pool.main",
        "client.alpha",
        "user.alice",
    ]
    assert (site.pool_path / "costor-pool.json").is_file()

    again = site.cli("plan", "--detailed-exitcode", "--json")
    assert again.code == 0, again.stdout
    assert all(c["change"]["actions"] == ["no-op"] for c in again.json()["resource_changes"])
    assert all(c["reason"] for c in again.json()["resource_changes"])  # no-ops say why
    assert site.cli("apply", "--auto-approve", "--json").json()["changes"] == 0
    # The saved plan was used: applying it again is refused as stale.
    stale = site.cli("apply", str(planfile))
    assert stale.code == 1 and "stale" in stale.stderr and "serial" in stale.stderr


@pytest.mark.parametrize(
    "change, expected",
    [
        ("inventory", "inventory.toml changed"),
        ("new-profile", "appeared"),
        ("profile", "changed"),
        ("secret", "secret's value changed"),
        ("state", "serial"),
        ("facts", "observed of pool.main changed"),
    ],
)
def test_saved_plan_is_refused_when_stale(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, expected: str
) -> None:
    (site.root / "profiles").mkdir()
    (site.root / "profiles" / "base.toml").write_text('exclude = ["*.tmp"]\n')
    replace(site, 'transport = "local"', 'transport = "local"\nprofiles = ["base"]')
    planfile = tmp_path / "p.plan"
    assert site.cli("plan", "--out", str(planfile)).code == 0
    if change == "inventory":
        append(site, "# a comment changes the bytes\n")
    elif change == "new-profile":
        (site.root / "profiles" / "other.toml").write_text("one_file_system = true\n")
    elif change == "profile":
        (site.root / "profiles" / "base.toml").write_text('exclude = ["*.tmp", "*.bak"]\n')
    elif change == "secret":
        monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "another passphrase entirely")
    elif change == "state":
        assert site.cli("apply", "--auto-approve", "--target", "site.hq").code == 0
    elif change == "facts":
        site.pool_path.mkdir()
        (site.pool_path / "someone-elses.txt").write_text("data")
    result = site.cli("apply", str(planfile))
    assert result.code == 1
    assert expected in result.stderr, result.stderr
    assert "stale" in result.stderr
    assert not (site.pool_path / "costor-pool.json").exists()  # nothing was done


def test_tampered_or_foreign_plan_files_are_refused(site: Site, tmp_path: Path) -> None:
    planfile = tmp_path / "p.plan"
    assert site.cli("plan", "--out", str(planfile)).code == 0
    body = json.loads(planfile.read_text())
    body["plan"]["resource_changes"][0]["reason"] = "trust me"
    tampered = tmp_path / "tampered.plan"
    tampered.write_text(json.dumps(body))
    result = site.cli("apply", str(tampered))
    assert result.code == 1 and "signature does not match" in result.stderr

    (tmp_path / "junk.plan").write_text("not a plan")
    junk = site.cli("apply", str(tmp_path / "junk.plan"))
    assert junk.code == 1 and "not a CoStor plan file" in junk.stderr

    # A plan made against another state (another lineage) is named as such.
    site.lose_state()
    foreign = site.cli("apply", str(planfile))
    assert foreign.code == 1 and "another state" in foreign.stderr
    assert "Traceback" not in result.stderr + junk.stderr + foreign.stderr


def test_saved_plan_takes_no_planning_flags(site: Site, tmp_path: Path) -> None:
    planfile = tmp_path / "p.plan"
    assert site.cli("plan", "--out", str(planfile)).code == 0
    result = site.cli("apply", str(planfile), "--target", "pool.main")
    assert result.code == 1 and "belong" in result.stderr


def test_apply_asks_on_a_terminal_and_only_yes_proceeds(site: Site) -> None:
    code, screen = run_in_pty(["apply", "-c", str(site.inventory)], "no")
    assert code == 1 and "Apply cancelled" in screen
    assert not (site.pool_path / "costor-pool.json").exists()
    code, screen = run_in_pty(["apply", "-c", str(site.inventory)], "yes")
    assert code == 0, screen
    assert "+ pool.main" in screen and "Apply complete" in screen
    assert (site.pool_path / "costor-pool.json").is_file()


def test_apply_refuses_to_ask_without_a_terminal(site: Site) -> None:
    for extra in ((), ("--json",)):
        result = site.run_process("apply", *extra)
        assert result.code == 1 and "--auto-approve" in result.stderr
    assert not site.pool_path.exists()


LOCK_HOLDER = """
import sys, time
from costor.db.session import open_engine
from costor.db.state import state_lock
engine = open_engine(sys.argv[1])
with state_lock(engine, "test holder") as info:
    print(info.lock_id, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(site: Site, seconds: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, site.database_url, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lock_id = proc.stdout.readline().strip()
    assert lock_id, "the holder did not get the lock"
    return proc, lock_id


def test_second_apply_fails_naming_the_holder_or_waits(site: Site) -> None:
    holder, lock_id = hold_lock(site, 3)
    try:
        refused = site.run_process("apply", "--auto-approve")
        assert refused.code == 1
        assert lock_id in refused.stderr and "test holder" in refused.stderr
        assert "force-unlock" in refused.stderr
        assert not (site.pool_path / "costor-pool.json").exists()
        waited = site.run_process("apply", "--auto-approve", "--lock-timeout", "60s")
        assert waited.code == 0, waited.stderr
    finally:
        holder.wait(timeout=60)
    assert (site.pool_path / "costor-pool.json").is_file()


def test_lock_of_a_killed_apply_does_not_block_the_next(site: Site) -> None:
    holder, _lock_id = hold_lock(site, 300)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    result = site.run_process("apply", "--auto-approve")
    assert result.code == 0, result.stderr


def test_force_unlock_needs_the_lock_id(site: Site) -> None:
    """A lock whose holder is alive but stuck (a frozen process, a host that stopped
    answering) is trusted until force-unlocked with its id; on PostgreSQL that also ends
    the holder's database session, which holds the advisory lock."""
    holder, lock_id = hold_lock(site, 300)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        refused = site.cli("apply", "--auto-approve")
        assert refused.code == 1 and lock_id in refused.stderr
        wrong = site.cli("force-unlock", "lock-999")
        assert wrong.code == 1 and lock_id in wrong.stderr
        unlocked = site.cli("force-unlock", lock_id)
        assert unlocked.code == 0 and "test holder" in unlocked.stdout
        applied = site.cli("apply", "--auto-approve")
        assert applied.code == 0, applied.stderr
    finally:
        holder.kill()
        holder.wait()


def test_lock_row_from_another_host_is_not_taken_over(site: Site) -> None:
    if not site.database_url.startswith("sqlite"):
        pytest.skip("on PostgreSQL the advisory lock, not the row, is the lock")
    assert site.cli("plan").code == 0  # creates the state
    site.sql(
        "INSERT INTO state_lock (name, lock_id, operation, who, host, host_id, pid, "
        "created_at) VALUES ('state', 'lock-123', 'apply', 'bob@elsewhere', 'elsewhere', "
        "'elsewhere|boot|pid:[1]', 4242, '2026-12-01 10:00:00')"
    )
    refused = site.cli("apply", "--auto-approve")
    assert refused.code == 1 and "bob@elsewhere" in refused.stderr and "lock-123" in refused.stderr
    assert site.cli("force-unlock", "lock-123").code == 0
    assert site.cli("apply", "--auto-approve").code == 0


def test_plan_file_errors_are_clear(site: Site, tmp_path: Path) -> None:
    missing_dir = site.cli("plan", "--out", str(tmp_path / "no-such-dir" / "p.plan"))
    assert missing_dir.code == 1 and "cannot write the plan file" in missing_dir.stderr
    planfile = tmp_path / "p.plan"
    assert site.cli("plan", "--out", str(planfile)).code == 0
    body = json.loads(planfile.read_text())
    body["plan"]["resource_changes"][0]["operation"] = "zap"
    planfile.write_text(json.dumps(body))
    for verb in ("show", "apply"):
        result = site.cli(verb, str(planfile))
        assert result.code == 1 and "unknown operation 'zap'" in result.stderr
        assert "Traceback" not in result.stderr


def test_concurrent_applies_never_interleave(site: Site) -> None:
    """Two real applies at once: one does everything, the other waits and finds nothing
    left to do (or also succeeds with nothing to do)."""
    append(site, USERS)
    first = site.process("apply", "--auto-approve", "--json", "--lock-timeout", "120")
    second = site.process("apply", "--auto-approve", "--json", "--lock-timeout", "120")
    outputs = [proc.communicate(timeout=180) for proc in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    counts = sorted(json.loads(out)["changes"] for out, _err in outputs)
    assert counts == [0, 5]


def test_target_plans_a_resource_and_its_dependencies(site: Site) -> None:
    append(site, USERS)
    planned = site.cli("plan", "--target", "client.alpha", "--json").json()
    assert {c["address"] for c in planned["resource_changes"]} == {
        "site.hq",
        "pool.main",
        "client.alpha",
    }
    assert site.cli("apply", "--auto-approve", "--target", "client.alpha").code == 0
    rest = site.cli("plan", "--json").json()
    pending = [
        c["address"] for c in rest["resource_changes"] if c["change"]["actions"] != ["no-op"]
    ]
    assert pending == ["group.ops", "user.alice"]
    unknown = site.cli("plan", "--target", "client.nobody")
    assert unknown.code == 1 and "no such resource" in unknown.stderr


def test_killed_apply_leaves_a_state_the_next_apply_finishes(site: Site) -> None:
    append(site, USERS)
    for delay in (0.3, 0.6, 0.9, 1.2):
        proc = site.process("apply", "--auto-approve")
        time.sleep(delay)
        proc.kill()
        proc.wait()
    result = site.run_process("apply", "--auto-approve", "--lock-timeout", "30")
    assert result.code == 0, result.stderr
    assert site.cli("plan", "--detailed-exitcode").code == 0
    assert site.cli("backup", "alpha").code == 0
    assert site.cli("check").code == 0


def test_pool_settings_take_effect_at_the_next_backup(applied: Site, source: Path) -> None:
    """compression and pack_size_mib are updates in place, used by the next backup."""
    replace(applied, "pack_size_mib = 4", 'pack_size_mib = 4\ncompression = { algorithm = "none" }')
    planned = applied.cli("plan", "--json").json()
    [change] = [c for c in planned["resource_changes"] if c["change"]["actions"] != ["no-op"]]
    assert change["address"] == "pool.main" and change["change"]["actions"] == ["update"]
    assert applied.cli("apply", "--auto-approve").code == 0
    (source / "more.txt").write_text("compressible text\n" * 5000)
    backup = applied.cli("backup", "alpha", "--json").json()
    assert backup["bytes_added_raw"] > 0
    assert backup["compression_ratio"] is not None and backup["compression_ratio"] < 1.01


def test_db_upgrade_and_status(site: Site) -> None:
    status = site.cli("db", "status", "--json").json()
    assert status["revision"] is None
    upgraded = site.cli("db", "upgrade", "--json").json()
    assert upgraded["from"] is None and upgraded["to"] == status["head"]
    again = site.cli("db", "upgrade")
    assert again.code == 0 and "already at revision" in again.stdout
    assert site.cli("apply", "--auto-approve").code == 0
    after = site.cli("db", "status", "--json").json()
    assert after["revision"] == after["head"] and after["serial"] == 3 and after["lineage"]


def test_missing_secret_is_a_diagnostic_naming_the_key(site: Site) -> None:
    append(site, USERS)
    env = {k: v for k, v in os.environ.items() if k != "COSTOR_TEST_ALICE"}
    for argv in (["plan"], ["apply", "--auto-approve"]):
        result = subprocess.run(
            [sys.executable, "-m", "costor", *argv, "-c", str(site.inventory)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 1
        assert "inventory.toml:" in result.stderr and "users.alice.password" in result.stderr
        assert "COSTOR_TEST_ALICE is not set" in result.stderr
    assert not site.pool_path.exists()


def test_blocked_plan_exits_4_never_no_changes_and_apply_refuses(
    applied: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan with a blocked change is not green in CI: exit 4 (with or without
    --detailed-exitcode, and with --json), no "No changes" above the blocked line, the
    blocked items in the JSON, and apply refuses it naming the reason."""
    monkeypatch.setenv("COSTOR_TEST_PASSPHRASE", "no longer the pool's passphrase")
    for flags in (("--detailed-exitcode",), ()):
        plan = applied.cli("plan", *flags)
        assert plan.code == 4, (flags, plan.stdout, plan.stderr)
        assert "No changes" not in plan.stdout
        assert plan.stdout.startswith("Plan blocked: 1 resource(s) cannot be planned")
        assert "Blocked: pool.main: the passphrase of pools.main.passphrase" in plan.stdout
        assert "plan blocked" in plan.stderr
    document = applied.cli("plan", "--json", "--detailed-exitcode")
    assert document.code == 4
    assert document.json()["applyable"] is False
    blocked = [c for c in document.json()["resource_changes"] if c.get("blocked")]
    assert [c["address"] for c in blocked] == ["pool.main"]
    assert "does not open the pool" in blocked[0]["blocked"]

    # The changes that could be planned are shown below the blocked lines.
    append(applied, USERS)
    plan = applied.cli("plan", "--detailed-exitcode")
    assert plan.code == 4
    assert plan.stdout.index("Blocked: pool.main") < plan.stdout.index("+ user.alice")
    assert "Plan: 2 to add" in plan.stdout and "No changes" not in plan.stdout

    planfile = tmp_path / "blocked.plan"
    saved = applied.cli("plan", "--out", str(planfile))
    assert saved.code == 4 and "costor apply" not in saved.stdout
    for argv in (("apply", str(planfile)), ("apply", "--auto-approve")):
        refused = applied.cli(*argv)
        assert refused.code == 1, argv
        assert "Refusing to apply" in refused.stderr and "the plan is blocked" in refused.stderr
        assert "does not open the pool" in refused.stderr
    assert [r for r in applied.sql("SELECT name FROM users")] == []


def test_plan_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from costor.cli.main import main

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "4: plan blocked" in text and "2: changes or drift" in text
