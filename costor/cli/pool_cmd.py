"""costor pool …: pool maintenance (reindex, key slots)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_json
from costor.errors import UsageError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser("pool", help="pool maintenance")
    actions = parser.add_subparsers(dest="pool_action", metavar="ACTION", required=True)
    reindex = actions.add_parser(
        "reindex", help="rebuild the index and the state's catalogue from the pool alone"
    )
    add_inventory_option(reindex)
    add_json_option(reindex)
    reindex.add_argument("--pool", metavar="P", required=True)
    add_key = actions.add_parser("add-key", help="add a key slot for another passphrase")
    add_inventory_option(add_key)
    add_json_option(add_key)
    add_key.add_argument("--pool", metavar="P", required=True)
    add_key.add_argument(
        "--new-passphrase-env",
        metavar="VAR",
        required=True,
        help="environment variable holding the new passphrase (never on the command line)",
    )
    add_key.add_argument("--kdf", choices=("argon2id", "scrypt"), default="argon2id")
    copy = actions.add_parser(
        "copy",
        help="copy a whole pool (as stored, still encrypted) to another place; incremental",
        description="SRC and DST are each a declared pool's name, a directory, file:///path, "
        "or s3://bucket/prefix (endpoint and credentials from COSTOR_S3_ENDPOINT or "
        "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).",
    )
    add_inventory_option(copy)
    add_json_option(copy)
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DST")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.pool_action == "copy":
        return _copy(args)
    ctx = context(args)
    if args.pool_action == "reindex":
        from costor.ops.check import reindex_pool

        result = reindex_pool(ctx, args.pool)
        if args.json:
            print_json(result)
        else:
            print(
                f"pool {args.pool}: index rebuilt from {result['packs']} pack(s) "
                f"({result['blobs']} blobs), {result['snapshots']} snapshot(s) catalogued"
            )
            for pack in result["unreadable_packs"]:
                print(f"  unreadable pack left out: {pack}")
        return 0
    new_passphrase = os.environ.get(args.new_passphrase_env)
    if not new_passphrase:
        raise UsageError(message=f"environment variable {args.new_passphrase_env} is not set")
    pool = ctx.open_pool(args.pool, load_index=False)
    slot = pool.add_key_slot(new_passphrase, args.kdf)
    if args.json:
        print_json({"pool": args.pool, "key_slot": slot})
    else:
        print(f"pool {args.pool}: added key slot {slot}")
    return 0


def _copy(args: argparse.Namespace) -> int:
    from costor.cli.progress import make_progress
    from costor.ops.pool_copy import copy

    # Plain locations need no inventory; a pool's name needs one.
    ctx = context(args) if os.path.exists(args.inventory) else None
    progress = make_progress("copy", json_output=args.json)
    try:
        report = copy(ctx, args.source, args.destination, progress=progress)
    finally:
        progress.close()
    if args.json:
        print_json(report.to_json())
    else:
        print(
            f"pool {report.uuid}: copied {report.copied} object(s) "
            f"({human_bytes(report.bytes_copied)}), {report.skipped} already present, "
            f"to {report.destination}; every object verified"
        )
    return 0
