"""Command line: ``python -m reprolib run --profile tiny`` runs every stage and builds the book;
``python -m reprolib smoke --profile paper`` runs the paper profile on random models of its real architectures."""
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
    smoke = sub.add_parser("smoke", help="run every stage of a profile on random models of its real architectures, "
                                          "offline, with minimal counts at the real sizes, and check the outputs")
    smoke.add_argument("--profile", default="paper", help="paper (default) or a YAML path")
    smoke.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                       help="override of the smoke run's own settings, e.g. -p multigen.prompt_sets coco")
    smoke.add_argument("--workdir", help="folder for the models, stand-ins and outputs (default: a temporary one)")
    smoke.add_argument("--keep", action="store_true", help="keep the work folder afterwards (~32 GB)")
    smoke.add_argument("--only", action="append", metavar="STAGE", help="run only this stage; repeatable")
    smoke.add_argument("--shared", help="folder of the authors' metadata.jsonl and MultiGen prompt files "
                                        "(default: ../shared/data/tokencompose)")
    smoke.add_argument("--json", metavar="PATH", help="also write the report there")
    args = parser.parse_args(argv)
    if args.cmd == "smoke":
        return _smoke(args)

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


def _smoke(args) -> int:
    import json
    from pathlib import Path

    from .runner import StageFailed, parse_params
    from .smoke import SHARED_DATA, SmokeError, report_table, run_smoke
    try:
        report = run_smoke(args.profile, args.workdir, keep=args.keep, only=args.only,
                           extra=parse_params(args.param, None), shared=Path(args.shared) if args.shared else SHARED_DATA)
    except (SmokeError, StageFailed, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(report_table(report))
    if not report["ok"]:
        print(f"error: the smoke run failed; its work folder is kept: {report['workdir']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
