"""``kdcache`` command line: parse, make one library call, exit. ``kdcache COMMAND --help`` for each command.

Every kdcache error reaches the user as one line, ``kdcache: error: ...`` (exit 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kdcache.cli import pipelines, stores, tools
from kdcache.errors import KdcacheError, speaking


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcache", description="Knowledge distillation with cached teachers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (pipelines, stores, tools):
        commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stores.check(parser, args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # dask sets its loggers from its config when imported; cluster chatter is detail, like ours
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        with speaking("pipeline"):  # errors name YAML keys and flags
            return args.func(args)
    except KdcacheError as exc:
        print(f"kdcache: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdcache: interrupted; committed shards are kept and a re-run resumes", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
