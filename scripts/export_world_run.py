#!/usr/bin/env python
"""Commit a multi-seed miniature replication: run stage 06 with several fine-tune seeds, then export it.

    papermill notebooks/06_miniworld.ipynb runs/world_seeds/06_miniworld.ipynb -y "seeds: [0, 1, 2]" \\
        -p out_dir runs/world_seeds/out
    python scripts/export_world_run.py runs/world_seeds/out           # writes data/miniworld/multiseed/

The export keeps the run's scores, paired tests, between-seed effects and provenance, summarises its
attention mass and flow per (model, seed, layer group), and measures its validity gates (with stage 05's
world edits from ``--edits``). Stage 06 shows the committed run beside its own one-seed CI run.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reprolib.miniexp import COMMITTED_DIR, export_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="the out_dir of a finished stage-06 run")
    ap.add_argument("--dest", default=str(COMMITTED_DIR), help="where to write (default: %(default)s)")
    ap.add_argument("--edits", default="runs/tiny/editing/world_edit_success.csv",
                    help="stage 05's world edit table, for the BLD gate (default: %(default)s)")
    ap.add_argument("--command", default="", help="the command that made the run, recorded with it")
    args = ap.parse_args(argv)
    edits = pd.read_csv(args.edits) if Path(args.edits).is_file() else None
    if edits is None:
        print(f"note: {args.edits} not found: the BLD gate is recorded as not measured", file=sys.stderr)
    out = export_run(args.run_dir, args.dest, edits, args.command or shlex.join(sys.argv))
    print(f"exported {args.run_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
