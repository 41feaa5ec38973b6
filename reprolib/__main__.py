"""Command line: ``python -m reprolib run --profile tiny`` runs every stage and builds the book."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reprolib", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the stage notebooks with papermill, then build the book")
    run.add_argument("--profile", default="tiny", help="tiny (default, CPU) or paper (GPU), or a YAML path")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                     help="profile override, e.g. -p train.steps 100 (repeatable)")
    run.add_argument("--params", metavar="YAML", help="a YAML file of profile overrides")
    run.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (e.g. 03); repeatable")
    run.add_argument("--force", action="store_true", help="re-run stages even when cached")
    run.add_argument("--no-book", action="store_true", help="do not build the book afterwards")
    run.add_argument("--lenient", action="store_true", help="build the book without treating warnings as errors")
    args = parser.parse_args(argv)

    from .runner import StageFailed, build_book, parse_params, run_stages
    try:
        overrides = parse_params(args.param, args.params)
        run_stages(args.profile, overrides, only=args.only, force=args.force)
        if not args.no_book:
            html = build_book(strict=not args.lenient)
            print(f"book: {html / 'index.html'}")
    except (StageFailed, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
