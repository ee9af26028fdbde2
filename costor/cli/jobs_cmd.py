"""costor jobs: the job history and queue of the site daemon.

costor jobs [--json] [--state S] [--kind K] [--limit N]   # newest first
costor jobs add KIND TARGET [--json]                      # queue a job now
costor jobs cancel ID [--json]                            # take it off the queue, or stop it
costor jobs log ID [--follow] [--json]                    # what the job logged (as it runs)
costor jobs run ID                                        # run one job here
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json, terminal_text
from costor.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "jobs",
        help="list jobs; `jobs add KIND TARGET` queues one, `jobs cancel ID` cancels one, "
        "`jobs log ID [--follow]` shows what one logged, `jobs run ID` runs one",
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "add", "cancel", "log", "run"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("operands", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--state", help="only jobs in this state (queued, running, failed…)")
    parser.add_argument("--kind", help="only jobs of this kind (backup, prune…)")
    parser.add_argument("--limit", type=int, default=50, metavar="N")
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="jobs log: print new lines as the job logs them, until it ends",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    if args.action == "run":
        from costor.ops.jobs.runner import run_job

        if len(args.operands) != 1 or not args.operands[0].isdigit():
            raise UsageError(message="usage: costor jobs run ID")
        return run_job(ctx, int(args.operands[0]))
    if args.action == "cancel":
        from costor.ops.jobs.requests import cancel_job

        if len(args.operands) != 1 or not args.operands[0].isdigit():
            raise UsageError(message="usage: costor jobs cancel ID")
        cancelled = cancel_job(ctx, job_id=int(args.operands[0])).to_json()
        if args.json:
            print_json(cancelled)
        else:
            print(f"job {cancelled['id']}: {cancelled['kind']} {cancelled['target']} cancelled")
        return 0
    if args.action == "log":
        if len(args.operands) != 1 or not args.operands[0].isdigit():
            raise UsageError(message="usage: costor jobs log ID [--follow] [--json]")
        from costor.ops.jobs.logs import job_log

        job_id = int(args.operands[0])
        return print_log(
            lambda after: job_log(ctx, job_id, after=after).to_json(),
            job_id,
            follow=args.follow,
            as_json=args.json,
        )
    if args.follow:
        raise UsageError(message="--follow is for `costor jobs log ID`")
    if args.action == "add":
        from costor.ops.jobs.kinds import KINDS
        from costor.ops.jobs.requests import queue_job

        if len(args.operands) != 2 or args.operands[0] not in KINDS:
            kinds = "|".join(KINDS)
            raise UsageError(message=f"usage: costor jobs add {{{kinds}}} TARGET")
        kind, target = args.operands
        queued = queue_job(ctx, kind=kind, target=target)
        if args.json:
            print_json(queued.to_json())
        else:
            print(f"job {queued.id}: {queued.kind} {queued.target} queued")
        return 0
    if args.operands:
        raise UsageError(message="usage: costor jobs [--json] [--state S] [--kind K]")
    from costor.ops.jobs.requests import job_history

    history = job_history(ctx, state=args.state, kind=args.kind, limit=args.limit)
    if args.json:
        print_json(history.to_json())
        return 0
    _print_jobs(history.jobs)
    return 0


def _print_jobs(documents: list[dict[str, Any]]) -> None:
    if not documents:
        print("no jobs")
    else:
        header = f"{'ID':>6}  {'STARTED (UTC)':<19}  {'KIND':<8} {'TARGET':<20} {'STATE':<11} {'TOOK':>8}  {'TRIGGER':<9} ERROR"
        print(header.rstrip())
    for doc in documents:
        took = f"{doc['duration_s']:.1f}s" if doc["duration_s"] is not None else "-"
        progress = doc.get("progress") or {}
        if doc["state"] == "running" and progress.get("percent") is not None:
            took = f"{progress['percent']:.0f}%"  # how far it is (its progress document)
        when = (doc["started_at"] or doc["created_at"] or "")[:19].replace("T", " ")
        line = f"{doc['id']:>6}  {when:<19}  {doc['kind']:<8} {doc['target']:<20} {doc['state']:<11} {took:>8}  {doc['trigger']:<9}"
        if doc["error"]:
            line += f"  {doc['error'].splitlines()[0][:100]}"
        print(line.rstrip())


FOLLOW_EVERY = 1.0  # seconds between reads of a followed job's log
# After the job ended, how long lines may still arrive: its process writes its log every
# half second and once more as it exits (costor/ops/jobs/logs.py).
SETTLE = 2.0


def print_log(
    read: Callable[[int | None], dict[str, Any]], job_id: int, *, follow: bool, as_json: bool
) -> int:
    """Print job ``job_id``'s log, each part read by ``read(after)`` (its ``--json``
    document: from the state here, or from a site's API); with ``follow``, keep printing
    new lines until the job has ended and no more come. ``--json``: the document (with
    ``--follow``, one JSON object per line, each log line as it comes)."""
    if not follow:
        log = read(None)
        if as_json:
            print_json(log)
        elif not log["lines"]:
            print(f"job {job_id} ({log['state']}): no log lines")
        else:
            _print_lines(log["lines"], as_json=False)
        return 0
    after, ended_at = 0, None
    while True:
        document = read(after)
        _print_lines(document["lines"], as_json=as_json)
        after = document["next"]
        if document["more"]:
            continue
        if document["ended"]:
            if ended_at is None:
                ended_at = time.monotonic()
            elif time.monotonic() - ended_at >= SETTLE and not document["lines"]:
                return 0
        time.sleep(FOLLOW_EVERY)


def _print_lines(lines: list[dict[str, Any]], *, as_json: bool) -> None:
    for line in lines:
        if as_json:
            print(json.dumps(line, sort_keys=True), flush=True)
            continue
        when = line["time"][:19].replace("T", " ")
        level = "" if line["level"] == "INFO" else f"{line['level']}: "
        print(f"{when}  {level}{terminal_text(line['text'])}", flush=True)
