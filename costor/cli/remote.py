"""``costor --server URL VERB``: the verb runs on a remote site, through its API.

The site does the work and answers the documents its CLI prints with ``--json``; each
verb here asks one route (``costor.remote.ApiClient``) and prints the answer with the
verb's own formatter (``print_status``, ``print_snapshots``, ``print_listing``, the
backup and restore summaries, the jobs table), so the output is the local one. The
API's errors come back as the same :mod:`costor.errors` classes: the same message and
exit code as on the site.

What runs remotely: ``status``, ``snapshots``, ``ls``, ``restore`` (``--archive FILE|-``
downloads the archive; ``--target DIR`` queues a restore job onto a client's machine),
``backup CLIENT`` (queues a backup job; ``--wait`` follows it), ``jobs`` (list, ``add``,
``cancel``, ``log``). Any other verb needs the site's state or inventory and says so.

The token comes from ``--token-file`` or ``COSTOR_TOKEN``; the site's certificate is
pinned at first use, or verified against ``--server-ca`` (``costor.remote.tls``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from costor.cli.output import print_json
from costor.errors import (
    BACKUP_INCOMPLETE_EXIT,
    ArchiveExists,
    BackupError,
    NotAuthenticated,
    RestoreError,
    UsageError,
)
from costor.remote import ApiClient, TlsTrust
from costor.remote.known_servers import Pin

TOKEN_ENVIRONMENT = "COSTOR_TOKEN"
FORMATS = ("tar.zst", "tar", "zip")  # a name's suffix, longest first


def run_remotely(args: argparse.Namespace) -> int:
    """Run the parsed command ``args`` on the site at ``args.server``; its exit code."""
    verb = REMOTE_VERBS.get(args.verb)
    if verb is None:
        raise UsageError(
            message=f"{args.verb} runs only on the site itself (it needs the site's state "
            f"or inventory), not with --server; with --server: {', '.join(REMOTE_VERBS)}"
        )
    with connect(args) as api:
        return verb(args, api)


def connect(args: argparse.Namespace) -> ApiClient:
    trust = TlsTrust(ca_file=Path(args.server_ca) if args.server_ca else None, on_pin=_say_pinned)
    return ApiClient(args.server, _token(args), trust)


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise UsageError(message=f"--token-file {args.token_file}: {reason}") from None
        if not lines:
            raise NotAuthenticated(reason=f"--token-file {args.token_file} is empty")
        return lines[0].strip()  # the first line: a file may say more below it
    token = os.environ.get(TOKEN_ENVIRONMENT, "").strip()
    if not token:
        raise NotAuthenticated(
            reason=f"--server needs an API token: set {TOKEN_ENVIRONMENT} or give "
            "--token-file FILE (`costor token create` on the site makes one)"
        )
    return token


def _say_pinned(server: str, pin: Pin) -> None:
    print(
        f"costor: {server} is a new site server here: its certificate is pinned "
        f"(SHA-256 {pin.fingerprint}) in {pin.file}, line {pin.line}. Compare the "
        "fingerprint with the one the site's administrator reads "
        "(`openssl x509 -noout -fingerprint -sha256 -in CERT`).",
        file=sys.stderr,
    )


# --- the verbs -----------------------------------------------------------------------


def _status(args: argparse.Namespace, api: ApiClient) -> int:
    from costor.cli.status_cmd import print_status

    document = api.status()
    if args.json:
        print_json(document)
    else:
        print_status(document)
    return 0


def _snapshots(args: argparse.Namespace, api: ApiClient) -> int:
    from costor.cli.snapshots_cmd import print_snapshots

    documents = api.snapshots(client=args.client, pool=args.pool)
    if args.json:
        print_json(documents)
    else:
        print_snapshots(documents)
    return 0


def _ls(args: argparse.Namespace, api: ApiClient) -> int:
    from costor.cli.ls_cmd import print_listing

    entries = api.tree(args.snapshot, args.path)
    if args.json:
        print_json(entries)
    else:
        print_listing(entries, long=args.long)
    return 0


def _restore(args: argparse.Namespace, api: ApiClient) -> int:
    if getattr(args, "target_device", None) is not None:
        raise UsageError(
            message="with --server, restore takes no --target-device: a device is written "
            "by `costor restore` on the machine that has it (the site's API serves the "
            "image's bytes: GET /api/v1/snapshots/{id}/file?path=PATH)"
        )
    not_here = [
        name
        for name, given in (
            ("--dry-run", args.dry_run),
            ("--faithful", args.faithful),
            ("--overwrite", args.overwrite is not None),
            ("-v", args.verbose),
        )
        if given
    ]
    if not_here:
        raise UsageError(
            message=f"with --server, restore takes no {', '.join(not_here)}: the site "
            "writes archives whole and restores onto a client's machine with tar"
        )
    if args.target is not None:
        return _restore_job(args, api)
    if args.include or args.exclude or args.to_client or args.wait:
        raise UsageError(
            message="with --server, restore --archive takes no --include, --exclude, "
            "--to-client or --wait: the archive holds PATH whole"
        )
    if args.archive == "-":
        if args.json:
            raise UsageError(message="--json and --archive - both want stdout; choose one")
        if sys.stdout.isatty():
            raise UsageError(message="refusing to write an archive to a terminal; redirect stdout")
        snapshot = api.snapshot(args.snapshot)
        api.archive(snapshot["id"], args.path, archive_format("-", args.format), sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    format = archive_format(args.archive, args.format)
    if not args.force and os.path.lexists(args.archive):
        raise ArchiveExists(path=args.archive)
    snapshot = api.snapshot(args.snapshot)
    try:
        with _replacing(args.archive) as sink:
            archive_bytes = api.archive(snapshot["id"], args.path, format, sink)
    except OSError as error:
        raise RestoreError(
            reason=f"writing the archive {args.archive}: {error.strerror or error}"
        ) from None
    files, dirs, content = archive_counts(args.archive, format)
    document = {
        "snapshot_id": snapshot["id"],
        "client": snapshot["client"],
        "pool": snapshot["pool"],
        "path": args.path,
        "archive": args.archive,
        "format": format,
        "dry_run": False,
        "include": [],
        "exclude": [],
        "files": files,
        "files_written": files,
        "files_new": files,
        "files_overwritten": 0,
        "files_skipped": 0,
        "files_unchanged": 0,
        "files_not_overwritten": 0,
        "dirs": dirs,
        "bytes_written": content,
        "not_restorable": 0,  # left out by the site's writer: its audit record says
        "archive_bytes": archive_bytes,
    }
    _print_restored(args, document)
    return 0


def _restore_job(args: argparse.Namespace, api: ApiClient) -> int:
    if args.format or args.force:
        raise UsageError(message="--force and --format apply to --archive only")
    job = api.restore(
        args.snapshot,
        path=args.path,
        target=args.target,
        client=args.to_client,
        include=args.include,
        exclude=args.exclude,
    )
    if not args.wait:
        _print_queued(args, job)
        return 0
    job = _follow(args, api, job)
    if job["state"] != "succeeded":
        raise RestoreError(reason=_why(job))
    _print_restored(args, job["result"])
    return 0


def _print_restored(args: argparse.Namespace, document: dict[str, Any]) -> None:
    from costor.cli.restore_cmd import summary

    if args.json:
        print_json(document)
    else:
        print(summary(document))


def _backup(args: argparse.Namespace, api: ApiClient) -> int:
    from costor.cli.backup_cmd import print_problems, summary

    if args.all or not args.client:
        raise UsageError(
            message="with --server, backup takes one CLIENT (backup --all runs only on the "
            "site itself)"
        )
    job = api.queue("backup", args.client)
    if not args.wait:
        _print_queued(args, job)
        return 0
    job = _follow(args, api, job)
    if job["state"] != "succeeded":
        raise BackupError(client=args.client, reason=_why(job))
    result = job["result"]
    if args.json:
        print_json(result)
    else:
        print(summary(args.client, result))
        print_problems(result)
    return 0 if result.get("complete", True) else BACKUP_INCOMPLETE_EXIT


def _jobs(args: argparse.Namespace, api: ApiClient) -> int:
    from costor.cli.jobs_cmd import _print_jobs, print_log

    operands = args.operands
    one_id = len(operands) == 1 and operands[0].isdigit()
    if args.action == "cancel":
        if not one_id:
            raise UsageError(message="usage: costor jobs cancel ID")
        cancelled = api.cancel_job(int(operands[0]))
        if args.json:
            print_json(cancelled)
        else:
            print(f"job {cancelled['id']}: {cancelled['kind']} {cancelled['target']} cancelled")
        return 0
    if args.action == "add":
        if len(operands) != 2:
            raise UsageError(message="usage: costor jobs add KIND TARGET")
        _print_queued(args, api.queue(operands[0], operands[1]))
        return 0
    if args.action == "log":
        if not one_id:
            raise UsageError(message="usage: costor jobs log ID [--follow] [--json]")
        job_id = int(operands[0])
        return print_log(
            lambda after: api.job_log(job_id, after), job_id, follow=args.follow, as_json=args.json
        )
    if args.action != "list":
        raise UsageError(message=f"jobs {args.action} runs only on the site itself")
    if args.follow:
        raise UsageError(message="--follow is for `costor jobs log ID`")
    if operands:
        raise UsageError(message="usage: costor jobs [--json] [--state S] [--kind K]")
    jobs = api.jobs(state=args.state, kind=args.kind, limit=args.limit)
    if args.json:
        print_json(jobs)
    else:
        _print_jobs(jobs)
    return 0


REMOTE_VERBS: dict[str, Callable[[argparse.Namespace, ApiClient], int]] = {
    "status": _status,
    "snapshots": _snapshots,
    "ls": _ls,
    "restore": _restore,
    "backup": _backup,
    "jobs": _jobs,
}


# --- jobs ----------------------------------------------------------------------------


def _print_queued(args: argparse.Namespace, job: dict[str, Any]) -> None:
    """As ``costor jobs add`` prints a job it queued."""
    if args.json:
        print_json({key: job[key] for key in ("id", "kind", "target", "state")})
    else:
        print(f"job {job['id']}: {job['kind']} {job['target']} queued")


def _follow(args: argparse.Namespace, api: ApiClient, job: dict[str, Any]) -> dict[str, Any]:
    """Job ``job`` read until it has ended (each change of state said on stderr)."""
    said = [job.get("state")]
    print(f"costor: job {job['id']}: {job['kind']} {job['target']} {said[0]}", file=sys.stderr)

    def seen(now: dict[str, Any]) -> None:
        if now.get("state") != said[0]:
            said[0] = now.get("state")
            print(
                f"costor: job {now['id']}: {now['kind']} {now['target']} {said[0]}", file=sys.stderr
            )

    ended = api.follow(int(job["id"]), seen=seen)
    seen(ended)
    return ended


def _why(job: dict[str, Any]) -> str:
    error = (job.get("error") or "").strip()
    first = error.splitlines()[0] if error else "no error recorded"
    return f"job {job['id']} {job['state']}: {first}"


# --- archives ------------------------------------------------------------------------


def archive_format(name: str, format: str | None) -> str:
    """The archive format: ``format`` if given, else from ``name``'s suffix; ``-`` (a
    stream on stdout) is a tar. As ``costor restore --archive`` decides it."""
    if format is not None:
        return format
    if name == "-":
        return "tar"
    for candidate in FORMATS:
        if name.lower().endswith("." + candidate):
            return candidate
    raise UsageError(
        message=f"cannot tell the archive format of {name!r}: name it .tar, .tar.zst or "
        ".zip, or name the format (--format tar|tar.zst|zip)"
    )


@contextlib.contextmanager
def _replacing(destination: str) -> Iterator[IO[bytes]]:
    """A file beside ``destination`` that takes its place once complete: an archive cut
    short never stands under the name asked for."""
    directory = os.path.dirname(os.path.abspath(destination))
    prefix = f".{os.path.basename(destination)}."
    descriptor, partial = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
        os.replace(partial, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def archive_counts(path: str, format: str) -> tuple[int, int, int]:
    """An archive's file entries (hard-link names included), directories and bytes of
    content, counted as ``costor restore --archive`` counts what it writes (a symbolic
    link, a fifo or a device is neither)."""
    files = dirs = content = 0
    try:
        if format == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    kind = (info.external_attr >> 16) & 0o170000
                    if info.is_dir():
                        dirs += 1
                    elif kind in (0, 0o100000):
                        files += 1
                        content += info.file_size
            return files, dirs, content
        with (
            open(path, "rb") as raw,
            _decompressed(raw, format) as stream,
            tarfile.open(fileobj=stream, mode="r|") as archive,
        ):
            for member in archive:
                if member.isdir():
                    dirs += 1
                elif member.isreg():
                    files += 1
                    content += member.size
                elif member.islnk():
                    files += 1
    except (OSError, tarfile.TarError, zipfile.BadZipFile, ValueError) as error:
        raise RestoreError(
            reason=f"the archive downloaded to {path} does not read back as a {format}: {error}"
        ) from None
    return files, dirs, content


@contextlib.contextmanager
def _decompressed(raw: IO[bytes], format: str) -> Iterator[IO[bytes]]:
    if format != "tar.zst":
        yield raw
        return
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(raw) as stream:
        yield stream
