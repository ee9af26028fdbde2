"""costor prune: reclaim the space of data no snapshot needs (two-phase, never blocks
backups)."""

from __future__ import annotations

import argparse
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context, duration
from costor.cli.output import human_bytes, print_json
from costor.cli.progress import make_progress


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "prune", help="delete data no snapshot needs, repack mostly-empty packs"
    )
    add_inventory_option(parser)
    add_json_option(parser)
    parser.add_argument("--pool", metavar="P", help="only this pool (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="show what would be done")
    parser.add_argument(
        "--safety-window",
        metavar="DURATION",
        type=duration,
        help="keep unreferenced packs this long before deleting them, e.g. 1h, 0 "
        "(default: the pool's prune.safety_window)",
    )
    parser.add_argument(
        "--repack-threshold",
        metavar="PCT",
        help="repack packs with at least this share unused, e.g. 50%% (default: the pool's)",
    )
    parser.add_argument(
        "--max-unused",
        metavar="PCT",
        help="repack until at most this share of unused bytes is left, e.g. 5%% "
        "(default: the pool's prune.max_unused)",
    )
    parser.add_argument(
        "--max-repack", metavar="MIB", type=int, help="read at most this many MiB to repack"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from costor.cli.check_cmd import parse_percentage
    from costor.ops.maintenance.prune import prune_pools

    overrides: dict[str, Any] = {"safety_window": args.safety_window}
    if args.repack_threshold is not None:
        overrides["repack_threshold"] = parse_percentage(
            args.repack_threshold, "--repack-threshold"
        )
    if args.max_unused is not None:
        overrides["max_unused"] = parse_percentage(args.max_unused, "--max-unused")
    if args.max_repack is not None:
        overrides["max_repack_bytes"] = args.max_repack * 1024 * 1024
    progress = make_progress("repack", json_output=args.json)
    try:
        reports = prune_pools(
            context(args), pool=args.pool, dry_run=args.dry_run, progress=progress, **overrides
        )
    finally:
        progress.close()
    if args.json:
        print_json({"dry_run": args.dry_run, "pools": [r.to_json() for _n, r in reports]})
        return 0
    would = "would " if args.dry_run else ""
    for name, r in reports:
        print(
            f"pool {name}: {r.snapshots} snapshot(s), {r.packs} pack(s) "
            f"({human_bytes(r.bytes_stored)}), {human_bytes(r.bytes_unused)} unused"
        )
        print(
            f"  {would}delete {r.packs_deleted} pack(s) ({human_bytes(r.bytes_deleted)}), "
            f"{would}repack {r.packs_repacked} into {r.packs_written} "
            f"({human_bytes(r.bytes_written)} written): "
            f"{human_bytes(max(r.bytes_reclaimed, 0))} reclaimed"
        )
        if r.packs_condemned:
            print(f"  {would}mark {r.packs_condemned} pack(s) unreferenced")
        if r.packs_waiting:
            print(
                f"  {r.packs_waiting} unreferenced pack(s) ({human_bytes(r.bytes_waiting)}) "
                "kept until the safety window has passed and running backups finish"
            )
        for lease in r.waiting_for:
            print(f"  waiting for a backup on {lease['hostname']} (pid {lease['pid']})")
        if r.packs_resurrected:
            print(f"  {r.packs_resurrected} pack(s) needed again by a new snapshot, kept")
        for pack in r.unreadable_packs:
            print(f"  unreadable pack left for `costor check`: {pack}")
    return 0
