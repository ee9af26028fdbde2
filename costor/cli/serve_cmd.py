"""costor serve: the site daemon (scheduler and workers; the API and web UI come later)."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, duration


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the scheduler and workers (SIGTERM stops gracefully)"
    )
    add_inventory_option(parser)
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="jobs at once")
    parser.add_argument(
        "--site",
        action="append",
        metavar="S",
        help="run only this site's jobs (repeatable; default: every site)",
    )
    parser.add_argument(
        "--tick", type=duration, default=1.0, metavar="DURATION", help="loop interval"
    )
    parser.add_argument(
        "--grace",
        type=duration,
        default=60.0,
        metavar="DURATION",
        help="on SIGTERM, let running jobs finish for this long, then interrupt them "
        "(they are retried) (default: 60s)",
    )
    parser.add_argument(
        "--retry-delay",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="wait this long before retrying an interrupted job (default: 30s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run what is due now and the jobs it queues, then exit (for cron or tests)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.cli.common import context
    from costor.daemon.server import Server
    from costor.errors import UnknownResource

    ctx = context(args, warn_broken=False)  # the daemon logs each finding itself
    for site in args.site or ():
        if site not in ctx.inventory.sites:
            raise UnknownResource(kind="site", name=site)
    server = Server(
        ctx,
        workers=args.workers,
        sites=args.site,
        tick=args.tick,
        grace=args.grace,
        once=args.once,
        retry_delay=args.retry_delay,
    )
    server.run()
    return 0
