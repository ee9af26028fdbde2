"""Apply is the gate: what runs is the configuration `costor apply` recorded, never the
working inventory on disk. An edited but unapplied inventory changes nothing; a broken
one never stops the site (the read-only verbs and backups run from the state) and is
reported with file, line and column."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from support.fixtures import Site
from support.inventory import local_tables, rewrite_tables, write_local_inventory

from costor.config.applied import load_settings
from costor.db.queue import HEARTBEAT_EVERY


def _rewrite(inventory: Path, clients: dict[str, list[Path]], **kwargs: object) -> None:
    """The inventory written anew with the same [costor] table (on PostgreSQL each
    written inventory names a database of its own)."""
    rewrite_tables(inventory, *local_tables(clients, **kwargs))  # type: ignore[arg-type]


def _paths_of_snapshot(site: Site, ref: str) -> list[str]:
    listing = site.cli("ls", ref, "--json")
    assert listing.code == 0, listing.stderr
    return sorted(entry["path"] for entry in listing.json())


def test_unapplied_paths_and_excludes_change_nothing_until_apply(
    tmp_path: Path, source: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "new.txt").write_text("not applied yet\n")
    site = Site(tmp_path, write_local_inventory(tmp_path, {"alpha": [source]}), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0

    # The working copy now adds a path and excludes a file: plan shows it, nothing runs it.
    _rewrite(site.inventory, {"alpha": [source, other]}, excludes={"alpha": ["readme.txt"]})
    plan = site.cli("plan", "--detailed-exitcode")
    assert plan.code == 2, plan.stdout + plan.stderr
    backup = site.cli("backup", "alpha", "--json")
    assert backup.code == 0, backup.stderr
    assert backup.json()["paths"] == [str(source)]
    assert "client.alpha has unapplied changes" in backup.json()["warnings"][0]
    listed = _paths_of_snapshot(site, "alpha:latest")
    assert any(path.endswith("readme.txt") for path in listed)
    assert not any("new.txt" in path for path in listed)

    status = site.cli("status", "--json").json()
    assert status["inventory"]["unapplied"] == {"client.alpha": "changed"}
    [client] = status["clients"]
    assert client["unapplied"] == "changed" and client["health"] == "warning"
    assert any("unapplied changes" in problem for problem in client["problems"])

    # Applied: the next backup runs the new configuration.
    assert site.cli("apply", "--auto-approve").code == 0
    backup = site.cli("backup", "alpha", "--json")
    assert backup.code == 0 and backup.json()["warnings"] == []
    assert sorted(backup.json()["paths"]) == sorted([str(source), str(other)])
    listed = _paths_of_snapshot(site, "alpha:latest")
    assert any("new.txt" in path for path in listed)
    assert not any(path.endswith("readme.txt") for path in listed)


def test_a_declared_client_that_was_never_applied_does_not_run(
    tmp_path: Path, source: Path
) -> None:
    site = Site(tmp_path, write_local_inventory(tmp_path, {"alpha": [source]}), tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    _rewrite(site.inventory, {"alpha": [source], "beta": [source]})
    result = site.cli("backup", "beta")
    assert result.code == 1
    assert "client.beta is declared but not applied yet" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_inventory_keeps_the_read_only_verbs_and_backups_working(
    tmp_path: Path, source: Path
) -> None:
    inventory = write_local_inventory(tmp_path, {"alpha": [source]})
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "alpha", "--json").json()["snapshot_id"]

    text = inventory.read_text()
    inventory.write_text(text.replace('transport = "local"', 'transport = "local"\npathz = 1'))
    line = inventory.read_text().splitlines().index("pathz = 1") + 1
    for args in (
        ("status", "--json"),
        ("jobs", "--json"),
        ("snapshots", "--json"),
        ("ls", "alpha:latest", "--json"),
        ("check", "--json"),
        ("backup", "alpha", "--json"),
        ("restore", first, "--target", str(tmp_path / "restored"), "--json"),
        ("diff", first, "alpha:latest", "--json"),
    ):
        result = site.cli(*args)
        assert result.code == 0, (args, result.stderr)
        # Each says why it runs the applied configuration, naming file, line and key.
        assert f"inventory.toml:{line}:1: clients.alpha.pathz" in result.stderr, args
        json.loads(result.stdout)
    status = site.cli("status", "--json").json()
    assert status["inventory"]["valid"] is False
    assert any("does not validate" in problem for problem in status["problems"])
    assert status["health"] != "ok"
    # plan and apply still refuse: the gate is closed until the file is fixed.
    assert site.cli("plan").code == 1

    # Not even valid TOML: [costor] is still found, and so is the state.
    inventory.write_text(text + "\n[clients.alpha\n")
    result = site.cli("snapshots", "--json")
    assert result.code == 0, result.stderr
    assert len(result.json()) == 2
    assert "invalid TOML" in result.stderr


def test_settings_are_found_in_a_file_that_does_not_parse(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[costor]\nstate_dir = "elsewhere"  # kept\n\n[pools.main]\nsite = "hq"\nsite = "x"\n'
    )
    settings = load_settings(inventory)
    assert settings.state_dir == tmp_path / "elsewhere"
    assert settings.database_url == f"sqlite:///{tmp_path / 'elsewhere'}/state.db"


def test_the_daemon_runs_the_applied_configuration_and_reports_a_broken_inventory_once(
    tmp_path: Path, source: Path
) -> None:
    inventory = write_local_inventory(tmp_path, {"alpha": [source]})
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    inventory.write_text(
        inventory.read_text().replace('transport = "local"', 'transport = "local"\npathz = 1')
    )
    assert site.cli("jobs", "add", "backup", "alpha").code == 0
    serve = site.process("serve", "--tick", "0.2")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if site.cli("jobs", "--json").json()[0]["state"] == "succeeded":
                break
            time.sleep(0.2)
        time.sleep(2 * HEARTBEAT_EVERY + 1)  # the inventory is read again twice meanwhile
    finally:
        serve.send_signal(signal.SIGTERM)
        _out, err = serve.communicate(timeout=60)
    text = err.decode()
    assert serve.returncode == 0, text
    line = inventory.read_text().splitlines().index("pathz = 1") + 1
    finding = f"inventory.toml:{line}:1: clients.alpha.pathz: unknown key 'pathz'"
    assert text.count(finding) == 1, text
    [job] = site.cli("jobs", "--json").json()
    assert job["state"] == "succeeded", job
    log = (tmp_path / ".costor" / "logs" / f"job-{job['id']}.log").read_text()
    assert "running the applied configuration" in log
    assert job["result"]["snapshot_id"] in log


def test_a_targeted_apply_schedules_only_what_it_applied(tmp_path: Path, source: Path) -> None:
    inventory = write_local_inventory(tmp_path, {"alpha": [source]})
    text = inventory.read_text().replace(
        'transport = "local"', 'transport = "local"\npolicy = "nightly"'
    )
    inventory.write_text(text + '\n[policies.nightly]\nschedule = "0 2 * * *"\n')
    site = Site(tmp_path, inventory, tmp_path / "pool")
    assert site.cli("apply", "--auto-approve").code == 0
    # The policy's schedule changes, and a site is added; only the site is applied.
    inventory.write_text(
        inventory.read_text().replace('"0 2 * * *"', '"0 3 * * *"') + "\n[sites.branch]\n"
    )
    plan = site.cli("plan", "--target", "site.branch", "--out", str(tmp_path / "p.plan"))
    assert plan.code == 0, plan.stderr
    assert site.cli("apply", str(tmp_path / "p.plan")).code == 0
    assert site.sql("SELECT key, cron FROM schedules") == [("backup:alpha", "0 2 * * *")]
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.sql("SELECT key, cron FROM schedules") == [("backup:alpha", "0 3 * * *")]
