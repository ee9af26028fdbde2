"""costor jobs: the job history and queue of the site daemon.

costor jobs [--json] [--state S] [--kind K] [--limit N]   # newest first
costor jobs add KIND TARGET [--json]                      # queue a job now
costor jobs run ID                                        # run one job here
"""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import print_json
from costor.errors import UnknownResource, UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "jobs", help="list jobs; `jobs add KIND TARGET` queues one, `jobs run ID` runs one"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument(
        "action", nargs="?", default="list", choices=("list", "add", "run"), help=argparse.SUPPRESS
    )
    parser.add_argument("operands", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--state", help="only jobs in this state (queued, running, failed…)")
    parser.add_argument("--kind", help="only jobs of this kind (backup, prune…)")
    parser.add_argument("--limit", type=int, default=50, metavar="N")
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.ops import jobs

    ctx = context(args)
    if args.action == "run":
        from costor.ops.runner import run_job

        if len(args.operands) != 1 or not args.operands[0].isdigit():
            raise UsageError(message="usage: costor jobs run ID")
        return run_job(ctx, int(args.operands[0]))
    if args.action == "add":
        if len(args.operands) != 2 or args.operands[0] not in jobs.KINDS:
            kinds = "|".join(jobs.KINDS)
            raise UsageError(message=f"usage: costor jobs add {{{kinds}}} TARGET")
        kind, target = args.operands
        site = _site_of(ctx, kind, target)
        job_id = jobs.enqueue(ctx.engine, kind, target, site=site)
        if args.json:
            print_json({"id": job_id, "kind": kind, "target": target, "state": "queued"})
        else:
            print(f"job {job_id}: {kind} {target} queued")
        return 0
    if args.operands:
        raise UsageError(message="usage: costor jobs [--json] [--state S] [--kind K]")
    rows = jobs.list_jobs(ctx.engine, state=args.state, kind=args.kind, limit=args.limit)
    documents = [jobs.job_json(row) for row in rows]
    if args.json:
        print_json(documents)
        return 0
    if not documents:
        print("no jobs")
    else:
        header = f"{'ID':>6}  {'STARTED (UTC)':<19}  {'KIND':<8} {'TARGET':<20} {'STATE':<11} {'TOOK':>8}  {'TRIGGER':<9} ERROR"
        print(header.rstrip())
    for doc in documents:
        took = f"{doc['duration_s']:.1f}s" if doc["duration_s"] is not None else "-"
        when = (doc["started_at"] or doc["created_at"] or "")[:19].replace("T", " ")
        line = f"{doc['id']:>6}  {when:<19}  {doc['kind']:<8} {doc['target']:<20} {doc['state']:<11} {took:>8}  {doc['trigger']:<9}"
        if doc["error"]:
            line += f"  {doc['error'].splitlines()[0][:100]}"
        print(line.rstrip())
    return 0


def _site_of(ctx: Any, kind: str, target: str) -> str:
    inventory = ctx.inventory
    if kind in ("backup", "forget", "selftest"):
        if target not in inventory.clients:
            raise UnknownResource(kind="client", name=target)
        return str(inventory.clients[target].site)
    if target not in inventory.pools:
        raise UnknownResource(kind="pool", name=target)
    return str(inventory.pools[target].site)
