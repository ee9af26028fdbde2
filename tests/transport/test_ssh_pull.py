"""Agentless pull over SSH against a real OpenSSH sshd on loopback (tests/support/sshd.py):
first backup and identical restore, incrementals, cross-client dedup, host keys,
hooks, the SFTP fallback, dropped connections."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import tree_digest
from support.sshd import Sshd, make_tree, remote_dir, ssh_site, sshd  # noqa: F401  (fixtures)

MiB = 1024 * 1024


def test_first_backup_restores_identically(sshd: Sshd, remote_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    src = make_tree(remote_dir)
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src]}})
    plan = site.cli("plan")
    assert plan.code == 0, plan.stderr
    assert "records the host key 127.0.0.1 presents, SHA256:" in plan.stdout
    assert site.cli("apply", "--auto-approve").code == 0
    backup = site.cli("backup", "web", "--json")
    assert backup.code == 0, backup.stderr
    document = backup.json()
    assert document["transfer"] == "helper"
    assert document["files_new"] == 4 and document["bytes_transferred"] > 5 * MiB
    restored = site.cli("restore", "web:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert tree_digest(tmp_path / "r" / str(src).lstrip("/")) == tree_digest(src)
    assert site.cli("check", "--read-data").code == 0


def test_incremental_sends_only_what_changed(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src]}})
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "web", "--json").json()
    unchanged = site.cli("backup", "web", "--json").json()
    assert unchanged["files_unmodified"] == first["files_new"] and unchanged["files_new"] == 0
    assert unchanged["bytes_transferred"] < 20_000  # stat data both ways, no content
    (src / "etc" / "new.txt").write_text("a new file\n" * 100)
    (src / "etc" / "hosts").write_text("changed\n")
    changed = site.cli("backup", "web", "--json").json()
    assert (changed["files_new"], changed["files_changed"]) == (1, 2)  # hosts + its hard link
    assert changed["bytes_transferred"] < 20_000
    restored = site.cli("restore", "web:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert tree_digest(tmp_path / "r" / str(src).lstrip("/")) == tree_digest(src)


def test_a_second_host_with_the_same_files_sends_almost_nothing(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    first_src = make_tree(remote_dir / "one")
    second_src = remote_dir / "two"
    import shutil

    shutil.copytree(first_src, second_src, symlinks=True)  # the hard link becomes a file
    for readable in ("etc/hosts", "hardlink"):  # costortest reads them
        (second_src / readable).chmod(0o644)
    site = ssh_site(
        tmp_path,
        sshd,
        {"web1": {"paths": [first_src]}, "web2": {"paths": [second_src], "user": "costortest"}},
    )
    assert site.cli("apply", "--auto-approve").code == 0
    one = site.cli("backup", "web1", "--json").json()
    two = site.cli("backup", "web2", "--json").json()
    assert one["bytes_transferred"] > 5 * MiB
    assert two["files_failed"] == 0 and two["files_deduplicated"] == 4, json.dumps(two)
    assert two["bytes_transferred"] < one["bytes_transferred"] / 50
    assert two["bytes_added"] < 10_000  # trees only
    restored = site.cli("restore", "web2:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    got = tree_digest(tmp_path / "r" / str(second_src).lstrip("/"))
    assert {k: v.get("content") for k, v in got.items()} == {
        k: v.get("content") for k, v in tree_digest(second_src).items()
    }


def test_a_large_file_changed_in_place_sends_only_changed_blocks(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = remote_dir / "vm"
    src.mkdir()
    image = src / "disk.img"
    image.write_bytes(os.urandom(80 * MiB))
    site = ssh_site(tmp_path, sshd, {"vm": {"paths": [src]}})
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "vm", "--json").json()
    assert first["bytes_transferred"] > 80 * MiB
    with open(image, "r+b") as handle:  # 1 MiB changed in place, in the middle
        handle.seek(40 * MiB + 12345)
        handle.write(os.urandom(MiB))
    second = site.cli("backup", "vm", "--json").json()
    assert second["files_changed"] == 1
    assert second["bytes_transferred"] < 3 * MiB  # two touched 1 MiB blocks, not 80 MiB
    restored = site.cli("restore", "vm:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    assert (tmp_path / "r" / str(image).lstrip("/")).read_bytes() == image.read_bytes()
    assert site.cli("check", "--read-data").code == 0


def test_a_large_file_delta_reads_only_around_changes_and_cuts_as_a_full_pass(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changes at the start, two adjacent blocks, near the end, growth, then a cut: the
    parent's chunks between them are taken unread, and the chunks are exactly those of
    cutting the new file whole (so deduplication is as good as a full pass)."""
    from support.fixtures import PASSPHRASE

    from costor.store.backends import LocalBackend
    from costor.store.backup import sink
    from costor.store.pool import Pool

    src = remote_dir / "vm"
    src.mkdir()
    image = src / "disk.img"
    image.write_bytes(os.urandom(96 * MiB))
    twin = remote_dir / "twin"
    twin.mkdir()
    site = ssh_site(tmp_path, sshd, {"vm": {"paths": [src]}, "twin": {"paths": [twin]}})
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "vm").code == 0
    read: list[int] = []
    original = sink._BaseReader.read
    monkeypatch.setattr(
        sink._BaseReader, "read", lambda self, n: read.append(n) or original(self, n)
    )
    pool = Pool.open(LocalBackend(site.pool_path), PASSPHRASE)

    def grow(handle: Any) -> None:
        for offset, size in ((100, 5000), (41 * MiB - 10, 20), (90 * MiB + 7, 4096)):
            handle.seek(offset)
            handle.write(os.urandom(size))
        handle.seek(0, os.SEEK_END)
        handle.write(os.urandom(3 * MiB))

    def shrink(handle: Any) -> None:
        handle.seek(60 * MiB)
        handle.write(os.urandom(10))
        handle.truncate(97 * MiB - 12345)

    for change in (grow, shrink):
        with open(image, "r+b") as handle:
            change(handle)
        read.clear()
        result = site.cli("backup", "vm", "--json")
        assert result.code == 0, result.stderr
        assert result.json()["files_changed"] == 1 and result.json()["files_failed"] == 0
        assert sum(read) < 30 * MiB, change  # of ~96 MiB: only around the changes
        target = tmp_path / change.__name__
        restored = site.cli("restore", "vm:latest", "--target", str(target))
        assert restored.code == 0, restored.stderr
        data = image.read_bytes()
        assert (target / str(image).lstrip("/")).read_bytes() == data
        pool.load_index()
        latest = max(pool.list_snapshots(["vm"]), key=lambda snapshot: snapshot.time)
        [node] = [n for path, n in pool.walk(bytes.fromhex(latest.tree)) if path.endswith(b".img")]
        chunks = pool.make_chunker().cut_buf(data)
        assert node.content == [pool.blob_id(data[c.offset : c.offset + c.length]) for c in chunks]
    # The digest recorded for the rebuilt file is the one another host's copy has.
    (twin / "disk.img").write_bytes(image.read_bytes())
    copy = site.cli("backup", "twin", "--json")
    assert copy.code == 0, copy.stderr
    assert copy.json()["files_deduplicated"] == 1, copy.stdout
    assert copy.json()["bytes_transferred"] < MiB
    assert site.cli("check", "--read-data").code == 0


def test_a_changed_host_key_is_refused_until_accepted(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src]}})
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "web").code == 0
    sshd.new_host_key()
    try:
        refused = site.cli("backup", "web")
        assert refused.code == 1 and "(client web) has changed" in refused.stderr
        assert "costor hostkey accept web" in refused.stderr
        plan = site.cli("plan")
        assert "Blocked: client.web: the host key of 127.0.0.1 changed" in plan.stdout
        assert site.cli("apply", "--auto-approve").code == 1
        shown = site.cli("hostkey", "show", "web", "--json").json()
        assert shown["recorded"] != shown["presented"]
        wrong = site.cli("hostkey", "accept", "web", "--fingerprint", shown["recorded"])
        assert wrong.code == 1, wrong.stderr
        assert f"not {shown['recorded']} as expected: nothing was recorded" in wrong.stderr
        assert site.cli("hostkey", "show", "web", "--json").json()["recorded"] == shown["recorded"]
        accepted = site.cli(
            "hostkey", "accept", "web", "--json", "--fingerprint", shown["presented"]
        )
        assert accepted.code == 0, accepted.stderr
        assert accepted.json()["fingerprint"] == shown["presented"]
        assert site.cli("backup", "web").code == 0
        assert site.cli("plan", "--detailed-exitcode").code == 0
    finally:
        sshd.stop()
        sshd.start()


def test_a_pinned_host_key_is_required(sshd: Sshd, remote_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    src = make_tree(remote_dir)
    wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHX4lpANgbPNKbs3hhJ55R6tX2mZkdA2B64GfkBz1qRl"
    site = ssh_site(
        tmp_path, sshd, {"web": {"paths": [src], "ssh_extra": f', host_key = "{wrong}"'}}
    )
    plan = site.cli("plan")
    assert "not the pinned" in plan.stdout
    assert site.cli("backup", "web").code == 1
    right = (sshd.root / "host_key.pub").read_text().split()[:2]
    site.inventory.write_text(site.inventory.read_text().replace(wrong, " ".join(right)))
    assert site.cli("apply", "--auto-approve").code == 0
    assert site.cli("backup", "web").code == 0


def test_an_unreachable_host_fails_alone(sshd: Sshd, remote_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    from support.sshd import free_port

    src = make_tree(remote_dir)
    site = ssh_site(
        tmp_path,
        sshd,
        {"good": {"paths": [src]}, "gone": {"paths": [src], "port": free_port()}},
    )
    plan = site.cli("plan")
    assert plan.code == 0 and "is unreachable" in plan.stdout
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("backup", "--all", "--json")
    assert result.code == 1
    report = {b["client"]: b for b in result.json()["backups"]}
    assert report["good"]["ok"] and report["good"]["files_new"] == 4
    assert not report["gone"]["ok"] and "No host key is recorded" in report["gone"]["error"]
    direct = site.cli("backup", "gone")
    assert direct.code == 1 and "Traceback" not in direct.stderr


def test_a_failing_before_hook_fails_the_backup_and_after_still_runs(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    marker = remote_dir / "after-ran"
    hooks = (
        'hooks = { before = ["echo dumping >&2; echo disk full >&2; exit 3"], '
        f'after = ["touch {marker}"], timeout_s = 30 }}'
    )
    site = ssh_site(tmp_path, sshd, {"db": {"paths": [src], "extra": hooks}})
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("backup", "db")
    assert result.code == 1
    assert "before hook" in result.stderr and "exited with 3" in result.stderr
    assert "disk full" in result.stderr
    assert marker.exists()
    assert site.cli("snapshots", "--json").json() == []
    # A hook that works: its output is the backup's, and the snapshot is made.
    dump = remote_dir / "dump.sql"
    site.inventory.write_text(
        site.inventory.read_text().replace(
            "echo dumping >&2; echo disk full >&2; exit 3", f"echo 'SELECT 1;' > {dump}"
        )
    )
    site.inventory.write_text(
        site.inventory.read_text().replace(f'paths = ["{src}"]', f'paths = ["{src}", "{dump}"]')
    )
    assert site.cli("apply", "--auto-approve").code == 0
    done = site.cli("backup", "db", "--json")
    assert done.code == 0, done.stderr
    assert [h["phase"] for h in done.json()["hooks"]] == ["before", "after"]
    listing = site.cli("ls", "db:latest", "--json").json()
    assert str(dump) in {entry["path"] for entry in listing}


def test_a_hook_that_hangs_is_stopped_by_its_timeout(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    hooks = 'hooks = { before = ["sleep 60"], timeout_s = 1 }'
    site = ssh_site(tmp_path, sshd, {"db": {"paths": [src], "extra": hooks}})
    assert site.cli("apply", "--auto-approve").code == 0
    result = site.cli("backup", "db")
    assert result.code == 1 and "timed out after 1s" in result.stderr


def test_a_host_without_python_is_pulled_over_sftp(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = make_tree(remote_dir)
    for readable in ("etc/hosts",):
        (src / readable).chmod(0o644)
    site = ssh_site(tmp_path, sshd, {"old": {"paths": [src], "user": "nopython"}})
    assert site.cli("apply", "--auto-approve").code == 0
    first = site.cli("backup", "old", "--json")
    assert first.code == 0, first.stderr
    document = first.json()
    assert document["transfer"] == "sftp"
    assert "fell back to SFTP" in document["errors"][0]["error"]
    assert document["files_new"] == 4 and document["bytes_transferred"] > 5 * MiB
    second = site.cli("backup", "old", "--json").json()
    assert second["files_unmodified"] == 4 and second["bytes_transferred"] < 10_000
    restored = site.cli("restore", "old:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0, restored.stderr
    got = tree_digest(tmp_path / "r" / str(src).lstrip("/"))
    expected = tree_digest(src)
    # SFTP v3 carries whole seconds: content, types, modes and owners are exact.
    for path, entry in expected.items():
        assert got[path].get("content") == entry.get("content"), path
        assert got[path]["mode"] == entry["mode"] and got[path]["uid"] == entry["uid"], path


def test_a_dropped_connection_leaves_a_pool_the_next_backup_completes(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    import time

    src = remote_dir / "data"
    src.mkdir()
    for i in range(30):
        (src / f"part{i}.bin").write_bytes(os.urandom(4 * MiB))
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src], "user": "costortest"}})
    assert site.cli("apply", "--auto-approve").code == 0
    proc = site.process("backup", "web")
    deadline = time.monotonic() + 60
    while not list((site.pool_path / "packs").rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    sshd.kill_sessions("costortest")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert b"lost" in err or b"closed" in err
    assert site.cli("snapshots", "--json").json() == []
    resumed = site.cli("backup", "web", "--json")
    assert resumed.code == 0, resumed.stderr
    assert site.cli("check", "--read-data").code == 0
    restored = site.cli("restore", "web:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0
    assert tree_digest(tmp_path / "r" / str(src).lstrip("/")) == tree_digest(src)


SUDOERS = Path("/etc/sudoers.d/costor-test")


@pytest.fixture
def sudo_rule() -> object:
    """The sudoers line docs/ssh.md gives, for the test user."""
    import shutil as _shutil

    if _shutil.which("sudo") is None:
        pytest.skip("sudo is not installed (scripts/test.sh installs it)")
    from costor.transport.ssh import BOOTSTRAP

    python = _shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    SUDOERS.parent.mkdir(exist_ok=True)
    SUDOERS.write_text(f"costortest ALL=(root) NOPASSWD: {python} -c {BOOTSTRAP}\n")
    SUDOERS.chmod(0o440)
    yield python
    SUDOERS.unlink()


def test_sudo_runs_the_helper_as_root(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
    sudo_rule: str,
) -> None:
    src = make_tree(remote_dir)
    secret = src / "etc" / "shadow-like"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    without = (
        ssh_site(tmp_path / "a", sshd, {"web": {"paths": [src], "user": "costortest"}})
        if ((tmp_path / "a").mkdir() or True)
        else None
    )
    assert without is not None
    assert without.cli("apply", "--auto-approve").code == 0
    plain = without.cli("backup", "web", "--json").json()
    assert plain["files_failed"] >= 1  # root's 0600 file is not readable as costortest
    (tmp_path / "b").mkdir()
    site = ssh_site(
        tmp_path / "b",
        sshd,
        {
            "web": {
                "paths": [src],
                "user": "costortest",
                "ssh_extra": f', sudo = true, python = "{sudo_rule}"',
            }
        },
    )
    assert site.cli("apply", "--auto-approve").code == 0
    backup = site.cli("backup", "web", "--json")
    assert backup.code == 0, backup.stderr
    assert backup.json()["files_failed"] == 0
    restored = site.cli("restore", "web:latest", "--target", str(tmp_path / "r"))
    assert restored.code == 0
    assert (tmp_path / "r" / str(secret).lstrip("/")).read_text() == "root only\n"


def restricted_key(sshd: Sshd, name: str, command: str) -> Path:  # noqa: F811
    """A key added to authorized_keys as docs/ssh.md shows: restrict, from=, command=."""
    import subprocess

    key = sshd.root / name
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = Path(f"{key}.pub").read_text().strip()
    quoted = command.replace('"', '\\"')
    with open(sshd.root / "authorized_keys", "a") as handle:
        handle.write(f'restrict,from="127.0.0.1",command="{quoted}" {public}\n')
    return key


def test_a_key_restricted_to_the_helper_backs_up_and_does_nothing_else(
    sshd: Sshd,  # noqa: F811
    remote_dir: Path,  # noqa: F811
    tmp_path: Path,
    sudo_rule: str,
) -> None:
    import subprocess

    from costor.transport.ssh import BOOTSTRAP

    src = make_tree(remote_dir)
    secret = src / "etc" / "root-only"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    key = restricted_key(sshd, "restricted_key", f'sudo -n {sudo_rule} -c "{BOOTSTRAP}"')
    site = ssh_site(tmp_path, sshd, {"web": {"paths": [src], "user": "costortest"}})
    site.inventory.write_text(site.inventory.read_text().replace(str(sshd.client_key), str(key)))
    assert site.cli("apply", "--auto-approve").code == 0
    backup = site.cli("backup", "web", "--json")
    assert backup.code == 0, backup.stderr
    assert backup.json()["files_failed"] == 0  # under sudo: root's 0600 file too
    # The key runs the helper whatever is asked: no shell, no other command.
    other = subprocess.run(
        [
            "ssh",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-i",
            str(key),
            "-p",
            str(sshd.port),
            "costortest@127.0.0.1",
            "id",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert "uid=" not in other.stdout
