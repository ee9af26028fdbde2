"""costor serve: the site daemon (scheduler and workers) and the site server's HTTP API
(docs/server.md; the web UI comes later)."""

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
        "--listen",
        metavar="HOST:PORT",
        help="serve the API here (default: the site's `listen`, else 127.0.0.1:8443; plain "
        "HTTP only on loopback unless the site sets insecure_http = true)",
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
    http = None if args.once else _http_server(args, ctx)
    server = Server(
        ctx,
        http=http,
        workers=args.workers,
        sites=args.site,
        tick=args.tick,
        grace=args.grace,
        once=args.once,
        retry_delay=args.retry_delay,
    )
    server.run()
    return 0


def _http_server(args: argparse.Namespace, ctx: Any) -> Any:
    """The API's server for the served sites' ``listen``/``tls``/``insecure_http`` (or
    ``--listen``)."""
    from costor.config.model import DEFAULT_LISTEN
    from costor.errors import UsageError
    from costor.server.listen import HttpServer, ListenSettings

    sites = [ctx.inventory.sites[name] for name in sorted(args.site or ctx.inventory.sites)]
    declared = {(s.listen, s.tls, s.insecure_http) for s in sites if s.listen or s.tls}
    if len(declared) > 1:
        raise UsageError(
            message="the served sites declare different listen/tls settings: "
            "serve one site (--site S) per process"
        )
    if declared:
        listen, tls, insecure = next(iter(declared))
    else:
        listen, tls, insecure = None, None, any(s.insecure_http for s in sites)
    base = ctx.inventory.base_dir
    settings = ListenSettings(
        address=args.listen or listen or DEFAULT_LISTEN,
        tls_cert=(base / tls.cert) if tls else None,
        tls_key=(base / tls.key) if tls else None,
        insecure_http=insecure,
        required=bool(args.listen or listen),
    )
    return HttpServer(ctx.inventory_path, settings)
