#!/usr/bin/env python3
"""Regenerate docs/ui.md and its screenshots (docs/ui/*.png) from the web UI itself.

Runs the browser tests (tests/ui: Debian's chromium against a real ``costor serve``)
with ``COSTOR_UI_SHOTS=docs/ui``, so each page they visit is saved there at a fixed
viewport (1280×800; the dashboard also at a phone's 390×844 and a wall screen's
1920×1080), then writes docs/ui.md: one section per page, in the order a person meets
them, with a sentence of what it shows. The pictures are what the tests saw, so the document cannot drift from the UI:
run this again after changing a page (it needs what the tests need: chromium and
``npm ci --prefix tests/ui``), and commit docs/ui.md with docs/ui/.

    .venv/bin/python scripts/ui_docs.py            # tests, screenshots, docs/ui.md
    .venv/bin/python scripts/ui_docs.py --no-run   # docs/ui.md from the screenshots there
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "ui"
DOC = ROOT / "docs" / "ui.md"

# The pages, in the order a person meets them: (screenshot name, title, what it shows).
PAGES: list[tuple[str, str, str]] = [
    (
        "login",
        "Logging in",
        "The login form: a user of the inventory's `[users]` and their password. Every "
        "page sends a browser without a session here first, and back to the page after.",
    ),
    (
        "login-failed",
        "A wrong password",
        "A failed login says so without telling whether the user exists; repeated "
        "failures are throttled as the API's logins are.",
    ),
    (
        "dashboard",
        "The dashboard",
        "What needs attention first (here a client that was never backed up, past its "
        "RPO), then the sites, the pools and the clients, worst first, and the running "
        "jobs.",
    ),
    (
        "dashboard-phone",
        "The dashboard on a phone",
        "The same page on a 390 px wide screen: the tables scroll, the less important "
        "columns are left out.",
    ),
    (
        "dashboard-wall",
        "The dashboard on a wall screen",
        "The same page on a 1920×1080 screen, as a wall display in an operations room shows it.",
    ),
    (
        "client-never-backed-up",
        "A client that was never backed up",
        "A client's page before its first backup: its health and the button that backs it up now.",
    ),
    (
        "job-running",
        "A job while it runs",
        "A backup job's page while it runs: phase, files, bytes, rate, the time left and "
        "its progress bar, pushed live by the server (server-sent events), and its log "
        "as it is written.",
    ),
    (
        "job",
        "A finished job",
        "The same job once it ended: its outcome and what the backup did, shown without "
        "reloading the page.",
    ),
    (
        "client",
        "A client and its snapshots",
        "A client's page: its health, its snapshots on a timeline and in a table, "
        "newest first (size, bytes added, files new and changed, a link to compare each "
        "with the one before), and its recent jobs.",
    ),
    (
        "jobs",
        "Jobs",
        "Every job, newest first, filtered by state, kind or client; each links to its "
        "page with its log.",
    ),
    (
        "snapshot",
        "A snapshot",
        "A snapshot's root directory: the snapshot's client, time, id, size and files, "
        "and the buttons to download, restore or compare.",
    ),
    (
        "directory",
        "A directory of a snapshot",
        "One directory, directories first; a large one is shown 500 entries a page, and "
        "can be filtered by name. It downloads as .zip or .tar.zst.",
    ),
    (
        "big-directory",
        "A directory of 20,000 entries",
        "A large directory is shown a page of 500 entries at a time, with the pager "
        "above and below and the filter by name.",
    ),
    (
        "file",
        "A file",
        "A file's details (size, mode, owner, time, content id), its download and the "
        "way to its previous versions.",
    ),
    (
        "versions",
        "Previous versions",
        "Each distinct content a path had across the client's snapshots, once, newest "
        "first, with the snapshots that hold it and a download of each.",
    ),
    (
        "compare-choose",
        "Choosing what to compare",
        '"Compare with…" on a snapshot: another snapshot of the same client, newer or '
        "older, to compare it with.",
    ),
    (
        "compare",
        "Comparing two snapshots",
        "What changed from one snapshot to another: added, removed and changed paths, "
        "with their sizes before and after.",
    ),
    (
        "restore",
        "Restoring",
        "The restore form: a path of the snapshot, restored onto its own machine or "
        "another client the user may restore to, into a directory; it queues a job "
        "whose page shows its progress.",
    ),
    (
        "dashboard-end-user",
        "What an end user sees",
        "An end user's dashboard: their own clients only, no pools or sites of others, "
        "and no audit log.",
    ),
    (
        "not-found",
        "Not found",
        "Another client's snapshot, typed into the address bar by an end user: the same "
        "404 page as for what does not exist.",
    ),
    (
        "job-restore",
        "An end user's restore",
        "The end user restored a directory of their snapshot onto their own machine (the "
        "only one the form offers them): a job like any other, followed live until it "
        "succeeded.",
    ),
    (
        "audit",
        "The audit log",
        "For auditors and admins: every action, newest first, filtered by actor, "
        "action, target and time (here the end user's login, downloads, restore job "
        "and logout), and the check of the log's hash chain.",
    ),
]

HEADER = """<!-- Generated by scripts/ui_docs.py from the browser tests' screenshots: do not edit
     by hand; run `.venv/bin/python scripts/ui_docs.py` again after changing a page. -->

# The web UI

`costor serve` serves the web UI on the same address as the Admin API: open it in a
browser and log in with a user of the inventory's `[users]`. Each user sees exactly what
their roles allow, as in the API; an end user sees only their own clients. The pages work
on a phone and on a wall screen, with or without JavaScript (live progress needs it).

What each page shows, who may see it and which API route does the same is in
[ui-reference.md](ui-reference.md); the read-only WebDAV view of the same snapshots,
for file managers, in [webdav.md](webdav.md).

These pictures are taken by the browser tests (tests/ui) on a small test site: clients
`alpha` and `beta`, backed up, and `gamma`, which the test backs up from its page.
"""


def run_tests() -> int:
    """The browser tests, saving their screenshots into docs/ui/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    venv = ROOT / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    env = {**os.environ, "COSTOR_UI_SHOTS": str(SHOTS)}
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ui"]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def write_doc() -> list[str]:
    """docs/ui.md from the screenshots in docs/ui/; returns the pages it has no picture
    of (and warns of pictures it has no words for)."""
    have = {path.stem for path in SHOTS.glob("*.png")}
    known = {name for name, _title, _text in PAGES}
    for stray in sorted(have - known):
        print(f"ui_docs: docs/ui/{stray}.png is no page of PAGES: not shown", file=sys.stderr)
    parts = [HEADER]
    missing = []
    for name, title, text in PAGES:
        if name not in have:
            missing.append(name)
            continue
        parts.append(f"\n## {title}\n\n{text}\n\n![{title}](ui/{name}.png)\n")
    DOC.write_text("".join(parts))
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-run", action="store_true", help="only write docs/ui.md from docs/ui/*.png"
    )
    args = parser.parse_args(argv)
    if not args.no_run:
        code = run_tests()
        if code != 0:
            print(f"ui_docs: the browser tests failed (pytest exit {code})", file=sys.stderr)
            return code
    missing = write_doc()
    if missing:
        print(f"ui_docs: no screenshot of {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"ui_docs: wrote {DOC.relative_to(ROOT)} and {len(PAGES)} screenshots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
