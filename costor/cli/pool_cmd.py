"""costor pool …: pool maintenance (reindex, repair, key slots, copies, format upgrade)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from costor.cli.common import add_inventory_option, add_json_option, context
from costor.cli.output import human_bytes, print_check_report, print_json, print_problems
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
    add_key.add_argument(
        "--label",
        metavar="TEXT",
        default="",
        help="a note stored in plain text with the slot, e.g. who holds the passphrase",
    )
    keys = actions.add_parser(
        "keys",
        help="list the key slots (id, created, KDF, label)",
        description="Lists the pool's key slots and marks the ones the inventory's passphrase "
        "opens.",
    )
    add_inventory_option(keys)
    add_json_option(keys)
    keys.add_argument("--pool", metavar="P", required=True)
    remove_key = actions.add_parser(
        "remove-key",
        help="remove a key slot (its passphrase no longer opens the pool)",
        description="Removes one key slot (one object; the data is untouched). Refuses the "
        "last slot, and the only slot the inventory's passphrase opens unless --force. To "
        "rotate a passphrase: add-key, put the new passphrase in the inventory, remove-key the "
        "old slot.",
    )
    add_inventory_option(remove_key)
    add_json_option(remove_key)
    remove_key.add_argument("--pool", metavar="P", required=True)
    remove_key.add_argument("slot", metavar="SLOT", help="a slot id or a unique prefix of one")
    remove_key.add_argument(
        "--force",
        action="store_true",
        help="also remove the only slot the inventory's passphrase opens",
    )
    upgrade = actions.add_parser(
        "upgrade",
        help="bind the pool's parameters to its key (pools made before format version 2)",
        description="Writes the tag that authenticates costor-pool.json (cipher, chunker, "
        "compression, pack size) under the pool's key, and re-wraps the key slots the "
        "inventory's passphrase opens. Until then an old pool opens with a warning. Make "
        "sure costor-pool.json is the pool's own first: the tag blesses what it says. "
        "Running it again changes nothing.",
    )
    add_inventory_option(upgrade)
    add_json_option(upgrade)
    upgrade.add_argument("pool", metavar="POOL", help="a declared pool's name")
    copy = actions.add_parser(
        "copy",
        help="copy a whole pool (as stored, still encrypted) to another place; incremental",
        description="SRC and DST are each a declared pool's name, a directory, file:///path, "
        "or s3://bucket/prefix (endpoint and credentials from the declared S3 pool named by "
        "--like, else from COSTOR_S3_ENDPOINT or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_REGION, COSTOR_S3_PATH_STYLE=1).",
    )
    add_inventory_option(copy)
    add_json_option(copy)
    copy.add_argument("source", metavar="SRC")
    copy.add_argument("destination", metavar="DST")
    copy.add_argument(
        "--verify-existing",
        action="store_true",
        help="read back what DST already holds (objects are named by the BLAKE3 of their "
        "bytes) and replace what is damaged from SRC",
    )
    copy.add_argument(
        "--like",
        metavar="POOL",
        help="s3:// locations take endpoint, region, path style and credentials from this "
        "declared S3 pool",
    )
    repair = actions.add_parser(
        "repair",
        help="check a pool and put right what it can: from a copy of the pool (--from), "
        "and by recording damage so backups store it again",
        description="Checks the pool (every byte with --read-data) and records the damaged "
        "blobs it finds, so the next backup of a client whose files still hold their "
        "content stores it again. With --from, damaged or missing packs, index segments "
        "and snapshots are put back from SRC, a copy of the same pool (a declared pool's "
        "name or a location, as for `pool copy`), and lost blobs are stored again from "
        "SRC's copies. A damaged index is rebuilt. Nothing is deleted. Then checks again "
        "and lists what is still lost: exit 0 when nothing is, 3 otherwise. See "
        "docs/repair.md.",
    )
    add_inventory_option(repair)
    add_json_option(repair)
    repair.add_argument("pool", metavar="POOL", help="a declared pool's name")
    repair.add_argument("--from", dest="source", metavar="SRC", help="a copy of the pool")
    repair.add_argument(
        "--read-data", action="store_true", help="read every pack to find damage (slow)"
    )
    repair.add_argument(
        "--like",
        metavar="POOL",
        help="an s3:// SRC takes endpoint, region, path style and credentials from this "
        "declared S3 pool",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.pool_action == "copy":
        return _copy(args)
    if args.pool_action == "repair":
        return _repair(args)
    if args.pool_action in ("keys", "add-key", "remove-key"):
        return _keys(args)
    if args.pool_action == "upgrade":
        return _upgrade(args)
    ctx = context(args)
    from costor.ops.maintenance.check import reindex_pool

    result = reindex_pool(ctx, args.pool)
    if args.json:
        print_json(result.to_json())
    else:
        print(
            f"pool {args.pool}: index rebuilt from {result.packs} pack(s) "
            f"({result.blobs} blobs), {result.snapshots} snapshot(s) catalogued"
        )
        for pack in result.unreadable_packs:
            print(f"  unreadable pack left out: {pack}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from costor.ops.control import keys

    ctx = context(args)
    if args.pool_action == "keys":
        listing = keys.list_keys(ctx, args.pool)
        if args.json:
            print_json(listing.to_json())
            return 0
        print(f"pool {args.pool} ({listing.uuid}): {len(listing.slots)} key slot(s)")
        for slot in listing.slots:
            note = "  <- the inventory's passphrase" if slot.opens_with_inventory_passphrase else ""
            if not slot.readable:
                note = "  (unreadable: not a key slot, or damaged)"
            print(
                f"  {slot.id}  {slot.created or 'created unknown':20}  {slot.kdf:8}  "
                f"{slot.label or '-'}{note}"
            )
        if not any(slot.opens_with_inventory_passphrase for slot in listing.slots):
            print("  the inventory's passphrase opens none of these slots")
        return 0
    if args.pool_action == "add-key":
        new_passphrase = os.environ.get(args.new_passphrase_env)
        if not new_passphrase:
            raise UsageError(message=f"environment variable {args.new_passphrase_env} is not set")
        added = keys.add_key(ctx, args.pool, new_passphrase, kdf=args.kdf, label=args.label)
        if args.json:
            print_json(added.to_json())
        else:
            print(f"pool {args.pool}: added key slot {added.slot.id}")
        return 0
    removed = keys.remove_key(ctx, args.pool, args.slot, force=args.force)
    if args.json:
        print_json(removed.to_json())
        return 0
    print(
        f"pool {args.pool}: removed key slot {removed.id}"
        + (f" ({removed.label})" if removed.label else "")
        + f"; {removed.remaining} slot(s) left"
    )
    if not removed.inventory_passphrase_opens:
        print(
            f"  the inventory's passphrase no longer opens pool {args.pool}: set "
            f"pools.{args.pool}.passphrase to a remaining slot's passphrase"
        )
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from costor.ops.maintenance.pool_upgrade import upgrade_pool

    outcome = upgrade_pool(context(args), args.pool)
    if args.json:
        print_json(outcome.to_json())
        return 0
    result = outcome.result
    if result.tagged:
        print(
            f"pool {args.pool}: upgraded from format version {result.from_version} to "
            f"{result.to_version}: its parameters are now bound to its key"
        )
    else:
        print(f"pool {args.pool}: already at format version {result.to_version}, parameters tagged")
    if result.slots_rebound:
        print(f"  {result.slots_rebound} key slot(s) re-wrapped")
    if result.slots_other:
        print(
            f"  {result.slots_other} key slot(s) of other passphrases left as they are: run "
            "`costor pool upgrade` with the inventory's passphrase set to each of them in "
            "turn to re-wrap them too"
        )
    return 0


def _copy(args: argparse.Namespace) -> int:
    from costor.cli.progress import make_progress
    from costor.ops.maintenance.pool_copy import copy

    # Plain locations need no inventory; a pool's name (or --like) needs one.
    ctx = context(args) if os.path.exists(args.inventory) else None
    progress = make_progress("copy", json_output=args.json)
    try:
        report = copy(
            ctx,
            args.source,
            args.destination,
            progress=progress,
            verify_existing=args.verify_existing,
            like=args.like,
        )
    finally:
        progress.close()
    if args.json:
        print_json(report.to_json())
        return 0
    print(
        f"pool {report.uuid}: copied {report.copied} object(s) "
        f"({human_bytes(report.bytes_copied)}), "
        + (
            f"{report.verified} already present and verified, "
            f"{report.replaced} damaged object(s) replaced, "
            if report.verify_existing
            else f"{report.skipped} already present, "
        )
        + f"to {report.destination}; every object verified"
    )
    for name in sorted(report.replaced_objects):
        print(f"  replaced damaged {name}")
    if report.extra_key_slots:
        print(
            f"  {len(report.extra_key_slots)} key slot(s) in the destination are not in the "
            "source (a removed passphrase still opens the copy): "
            + ", ".join(name.removeprefix("keys/") for name in report.extra_key_slots)
        )
    return 0


def _repair(args: argparse.Namespace) -> int:
    from costor.cli.progress import make_progress
    from costor.ops.maintenance.repair import repair_pool

    progress = make_progress("check", json_output=args.json)
    try:
        report = repair_pool(
            context(args),
            args.pool,
            source=args.source,
            like=args.like,
            read_data=args.read_data,
            progress=progress,
        )
    finally:
        progress.close()
    code = 0 if report.ok else 3
    if args.json:
        print_json(report.to_json())
        return code
    print_check_report(args.pool, report.found)
    for name in report.replaced:
        print(f"  put back from {report.source}: {name}")
    if report.blobs_stored:
        print(f"  {report.blobs_stored} blob(s) stored again from {report.source}'s copies")
    if report.index_rebuilt:
        print("  index rebuilt from the pack trailers")
    remaining = report.remaining
    assert remaining is not None
    if remaining.ok:
        print(
            f"pool {args.pool}: repaired; nothing is lost"
            if report.found.problems
            else f"pool {args.pool}: nothing to repair"
        )
        if remaining.healed:
            print("  `costor prune` removes the damaged copies that sound ones now stand in for")
        return code
    acted = report.replaced or report.blobs_stored or report.index_rebuilt
    if acted:
        print(f"pool {args.pool}: still damaged after the repair:")
        print_problems(remaining.problems, "LOST")
    else:
        print(f"pool {args.pool}: nothing could be repaired here; still damaged as above")
    clients = sorted({i["client"] for p in remaining.problems for i in p.affected})
    if clients:
        print(
            f"  back up {', '.join(clients)} again: files that still hold the lost content are "
            "read and stored again"
            + ("" if report.source else "; or repair --from a copy of the pool")
            + " (docs/repair.md)"
        )
    return code
