"""Sphinx extension: the book's pages and the stage notebooks they glue from.

Two jobs, both about never publishing a page without its numbers:

1. **Stages first.** ``jupyter-book build book`` on a fresh clone used to "succeed" with every table and
   figure missing, because the executed stages (``book/_stages/*.ipynb``, written by
   ``python -m reprolib run``) were not there. At ``builder-inited``, before any page is read,
   :func:`reprolib.runner.ensure_stages` compares every stage with the runner's cache (the same keys:
   notebook, parameters, reprolib's source, upstream stages) and, like Jupyter Book executing its own
   notebooks, runs the missing or stale ones — or stops the build with one line naming the command to
   run. ``REPROLIB_BOOK_STAGES`` (or ``reprolib_book_stages`` in the Sphinx config) chooses: ``auto``
   (default: run them on a tiny profile, stop on a real-weights one), ``run`` or ``check``.
2. **Dependencies.** myst-nb's cross-document ``{glue}`` (``:doc: _stages/03_multigen.ipynb``) does not
   tell Sphinx that the page depends on the notebook, so an incremental build kept the old tables.
   Each referenced ``_stages/*.ipynb`` is noted as a dependency *whether or not it exists yet*: Sphinx
   re-reads a page whose dependency is missing, and one whose dependency is newer than the page, so a
   page is re-read whenever a stage notebook it glues from appears or changes.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

STAGE_REF = re.compile(r"_stages/[\w.-]+\.ipynb")
ROOT = Path(__file__).resolve().parents[2]          # book/_ext/stage_deps.py → the repository


def stage_notebooks(source: str) -> list[str]:
    """The ``_stages/*.ipynb`` paths a page's source refers to, in order, without repeats."""
    return list(dict.fromkeys(STAGE_REF.findall(source)))


def note_stage_dependencies(app, docname: str, source: list[str]) -> None:
    """Note every stage notebook the page glues from, present or not (a missing one makes Sphinx re-read
    the page at the next build, a newer one too)."""
    here = Path(app.env.doc2path(docname)).parent
    for rel in stage_notebooks(source[0]):
        app.env.note_dependency(str((here / rel).resolve()))


def _reprolib_runner():
    """This book's own reprolib (the repository the book lives in), whatever is installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from reprolib import runner
    return runner


def ensure_stages(app) -> None:
    """Run the missing or stale stages before any page is read, or stop with one line saying what to run."""
    runner = _reprolib_runner()
    mode = os.environ.get(runner.BOOK_STAGES_ENV) or app.config.reprolib_book_stages
    stage_dir = Path(app.srcdir) / "_stages"
    try:
        runner.ensure_stages(mode, stage_dir=stage_dir, log=lambda m: print(m, flush=True))
    except (runner.StagesNotReady, runner.StageFailed, ValueError) as e:
        # One line, no traceback: SystemExit leaves Sphinx and jupyter-book without their error boxes.
        raise SystemExit(f"error: {e}") from None


def setup(app):
    app.add_config_value("reprolib_book_stages", "auto", "env")
    app.connect("builder-inited", ensure_stages)
    app.connect("source-read", note_stage_dependencies)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
