"""The deploy subcommands of `pgcutover`: install-triggers, uninstall-triggers, backfill, index, status.

`register(subparsers)` adds them to the main parser (proxy/cli.py); `python -m pgcutover.deploy.cli ...` runs them
alone.
Each handler returns the process exit code: 0 done, 1 a problem the message explains, 2 a bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pgcutover.core.config import METRICS, ConfigError, load_config
from pgcutover.core.failure import run_command

CONFIG_HELP = "TOML file with [proxy] upstream and the [[route]] tables (as for `serve`); default $PGCUTOVER_CONFIG"


def _run(work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    # failures (DeployError, asyncpg errors, OSError) become one line in core.failure.run_command
    return asyncio.run(work())


def _config(args: argparse.Namespace):
    if not args.config:
        raise ConfigError("--config FILE is required (or set PGCUTOVER_CONFIG)")
    return load_config(args.config)


def cmd_install(args: argparse.Namespace) -> int:
    from pgcutover.deploy.triggers import install, privileges_sql

    config = _config(args)
    grant_to = tuple(args.grant_to or ())

    async def work() -> int:
        plans = await install(config, args.route, dry_run=args.dry_run, grant_to=grant_to, force=args.force)
        if args.dry_run:
            print("-- privileges on schema pgcutover")
            print("\n".join(s.rstrip() for s in privileges_sql(grant_to)) + "\n")
        elif grant_to:
            print(f"granted USAGE on schema pgcutover and EXECUTE on pgcutover.try_vector to {', '.join(grant_to)}")
        for plan in plans:
            if args.dry_run:
                print(f"-- {plan.route.display}: {', '.join(plan.triggers)}")
                print(";\n".join(s.rstrip().rstrip(";") for s in plan.statements) + ";\n")
            else:
                what = ", ".join(plan.triggers) or "nothing (no legacy_column or shadow_table)"
                print(f"{plan.route.display}: installed {what}")
        return 0

    return _run(work)


def cmd_uninstall(args: argparse.Namespace) -> int:
    from pgcutover.deploy.triggers import uninstall

    config = _config(args)

    async def work() -> int:
        for table, found in await uninstall(config, args.route):
            print(f"{table}: {'removed triggers and functions' if found else 'nothing installed'}")
        return 0

    return _run(work)


def cmd_backfill(args: argparse.Namespace) -> int:
    from pgcutover.deploy.backfill import BackfillOptions, backfill, interrupted_line, report

    config = _config(args)
    options = BackfillOptions(batch=args.batch, max_rate=args.max_rate, shadow=args.shadow, workers=args.workers,
                              progress=not args.quiet)

    async def work() -> int:
        report(await backfill(config, args.route, options), sys.stdout)
        return 0

    try:
        return _run(work)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"\npgcutover backfill: {interrupted_line(_resume_command())}", file=sys.stderr)
        return 130


def _resume_command() -> str:
    """The command line that was run, as the operator would type it again (same flags, same checkpoint)."""
    import shlex

    return shlex.join(["pgcutover", *sys.argv[1:]])


def cmd_index(args: argparse.Namespace) -> int:
    from pgcutover.deploy.index import IndexOptions, create_indexes

    config = _config(args)
    options = IndexOptions(metric=args.metric, maintenance_work_mem=args.maintenance_work_mem,
                           parallel_workers=args.parallel_workers, m=args.m, ef_construction=args.ef_construction)

    async def work() -> int:
        for line in await create_indexes(config, args.route, options, dry_run=args.dry_run):
            print(line)
        return 0

    return _run(work)


def cmd_status(args: argparse.Namespace) -> int:
    from pgcutover.deploy.status import StatusOptions, status, to_json, to_table

    config = _config(args)
    options = StatusOptions(diff=not args.no_diff, diff_batch=args.diff_batch)

    async def work() -> int:
        statuses = await status(config, args.route, options)
        print(to_json(statuses) if args.json else to_table(statuses))
        return 0

    return _run(work)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive rate")
    return value


def _common(parser: argparse.ArgumentParser, route_help: str) -> None:
    parser.add_argument("--config", default=os.environ.get("PGCUTOVER_CONFIG"), metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--route", metavar="TABLE", help=route_help)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add install-triggers, uninstall-triggers, backfill, index and status to the `pgcutover` parser."""
    p = subparsers.add_parser(
        "install-triggers", help="install dual-write, shadow-sync and change-notice triggers",
        description="In one transaction per route, install in schema pgcutover: a dual-write trigger that sets "
                    "vector_column from legacy_column on every write (bad vectors: error, or NULL + "
                    "pgcutover.bad_rows with on_bad_vector = \"skip\"), shadow-sync triggers that apply every "
                    "INSERT/UPDATE/DELETE to shadow_table inside the writer's transaction, and change notices "
                    "on channel pgcutover_changes. Idempotent: run it again after changing the config or the "
                    "columns of the table or its shadow (the generated SQL names the columns it copies).")
    _common(p, "only this route's table (default: every route)")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    p.add_argument("--grant-to", action="append", metavar="ROLE",
                   help="a role that queries through the proxy: USAGE on schema pgcutover and EXECUTE on "
                        "pgcutover.try_vector and its decoders, which the fallback's queries for bytea legacy "
                        "formats call as the client (repeat for several roles; grants are kept by later runs). "
                        "Nothing in the schema is open to PUBLIC.")
    p.add_argument("--force", action="store_true",
                   help="install even when the source table has row-level security its shadow lacks (refused "
                        "otherwise: the shadow would serve every tenant's rows)")
    p.set_defaults(func=cmd_install)

    p = subparsers.add_parser(
        "uninstall-triggers", help="remove pgcutover's triggers and functions",
        description="Drop the triggers and functions install-triggers created (for the configured routes, and "
                    "without --route also for tables installed earlier but no longer configured). Data in "
                    "pgcutover.bad_rows and pgcutover.backfill_checkpoint is kept. Idempotent.")
    _common(p, "only this route's table (default: every route and every recorded installation)")
    p.set_defaults(func=cmd_uninstall)

    p = subparsers.add_parser(
        "backfill", help="fill vector_column from legacy_column in resumable batches",
        description="Fill vector_column from legacy_column (server-side conversion) in keyset-paginated "
                    "batches, one short transaction each, resumable from pgcutover.backfill_checkpoint after any "
                    "interruption; never overwrites a vector written meanwhile. Several runs at once share the "
                    "work. Bad rows are skipped, recorded in pgcutover.bad_rows and listed at the end.")
    _common(p, "only this route's table (default: every route, one after another)")
    p.add_argument("--batch", type=_positive, default=1000, metavar="N", help="rows per transaction (default 1000)")
    p.add_argument("--max-rate", type=_rate, metavar="ROWS_PER_S", help="throttle to this many rows per second")
    p.add_argument("--shadow", action="store_true", help="also copy every row into shadow_table")
    p.add_argument("--workers", type=_positive, default=2, metavar="N",
                   help="parallel connections, each filling its own key range (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final report")
    p.set_defaults(func=cmd_backfill)

    p = subparsers.add_parser(
        "index", help="build the route's HNSW index concurrently",
        description="CREATE INDEX CONCURRENTLY an HNSW index on vector_column for the route's metric; above "
                    "2,000 dimensions an expression index on (vector_column::halfvec(dims)). Skips an "
                    "equivalent valid index; drops and rebuilds an INVALID one left by a failed build.")
    _common(p, "only this route's table (default: every route)")
    p.add_argument("--dry-run", action="store_true", help="print the DDL (with its SET commands) and exit")
    p.add_argument("--metric", choices=METRICS, help="override the route's metric (default: route, else cosine)")
    p.add_argument("--maintenance-work-mem", default="1GB", metavar="SIZE", help="for the build (default 1GB)")
    p.add_argument("--parallel-workers", type=int, default=2, metavar="N",
                   help="max_parallel_maintenance_workers for the build (default 2)")
    p.add_argument("--m", type=_positive, metavar="N", help="HNSW m (pgvector default 16)")
    p.add_argument("--ef-construction", type=_positive, metavar="N", help="HNSW ef_construction (default 64)")
    p.set_defaults(func=cmd_index)

    p = subparsers.add_parser(
        "status", help="migration status per route",
        description="Per route: total rows, migrated, legacy-only, bad rows, percent migrated, backfill "
                    "checkpoint and rate, shadow rows and keys that differ from the table (checksums over key "
                    "and vector in key ranges), vector indexes (type, size, valid), triggers installed and "
                    "the split in force.")
    _common(p, "only this route's table (default: every route)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-diff", action="store_true", help="skip the table/shadow comparison (it reads every row)")
    p.add_argument("--diff-batch", type=_positive, default=5000, metavar="N",
                   help="keys per checksum range (default 5000)")
    p.set_defaults(func=cmd_status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgcutover", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    args = parser.parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
