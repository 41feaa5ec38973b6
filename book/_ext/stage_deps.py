"""Sphinx extension: a page that glues outputs of an executed stage notebook depends on that notebook.

myst-nb's cross-document ``{glue}`` (``:doc: _stages/03_multigen.ipynb``) does not tell Sphinx that the
page depends on the notebook, so an incremental ``jupyter-book build book`` after re-running a stage kept
serving the old tables and figures. Noting each referenced ``_stages/*.ipynb`` as a dependency makes
Sphinx re-read the page whenever that notebook changes.
"""
from __future__ import annotations

import re
from pathlib import Path

STAGE_REF = re.compile(r"_stages/[\w.-]+\.ipynb")


def stage_notebooks(source: str) -> list[str]:
    """The ``_stages/*.ipynb`` paths a page's source refers to, in order, without repeats."""
    return list(dict.fromkeys(STAGE_REF.findall(source)))


def note_stage_dependencies(app, docname: str, source: list[str]) -> None:
    here = Path(app.env.doc2path(docname)).parent
    for rel in stage_notebooks(source[0]):
        path = (here / rel).resolve()
        if path.is_file():
            app.env.note_dependency(str(path))


def setup(app):
    app.connect("source-read", note_stage_dependencies)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
