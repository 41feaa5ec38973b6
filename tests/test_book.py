"""The built book, opened in a real headless Chromium: tables and figures present, no glue placeholders.

Needs a built book (``python -m reprolib run --profile tiny``) and Debian's ``chromium``. CI sets
``REPROLIB_REQUIRE_BOOK=1`` so that a missing book or browser fails instead of skipping. A screenshot of
each page is saved under ``build/screenshots/`` (CI's artifact).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "build" / "screenshots"
REQUIRED = os.environ.get("REPROLIB_REQUIRE_BOOK") == "1"
PAGES = {"index.html": 0, "multigen.html": 1, "attention.html": 1, "editing.html": 1,
         "miniworld.html": 1, "usability.html": 1}   # page: min figures


def _need(cond: bool, why: str) -> None:
    if not cond:
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    _need(exe is not None, "Debian's chromium is not installed")
    return exe


def _run(exe: str, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=5000", f"--user-data-dir={ROOT / 'build' / 'chromium-profile'}"]
    r = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("page,min_figures", sorted(PAGES.items()))
def test_page_renders_with_tables_and_figures(page, min_figures):
    _need((HTML / page).is_file(), f"book not built: {HTML / page} missing (run python -m reprolib run)")
    exe = _chromium()
    url = (HTML / page).as_uri()
    dom = _run(exe, "--dump-dom", url)
    assert "<main" in dom or 'id="main-content"' in dom
    for placeholder in ("glue_ref", "not found in doc", "[mystnb", "Pending glue"):
        assert placeholder not in dom, f"{page}: unresolved glue ({placeholder})"
    if page != "index.html":
        assert dom.count("<img") >= min_figures, f"{page}: expected ≥{min_figures} figures"
        assert "<table" in dom, f"{page}: no table"
        assert "repro-banner" in dom, f"{page}: no profile banner"
        assert "repro-provenance" in dom, f"{page}: no provenance line"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / page.replace(".html", ".png")
    _run(exe, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_pages_depend_on_the_stage_notebooks_they_glue_from(tmp_path):
    """An incremental book build after re-running a stage must re-read the pages that glue from it
    (myst-nb does not declare the dependency; book/_ext/stage_deps.py does)."""
    import importlib.util
    import types
    spec = importlib.util.spec_from_file_location("stage_deps", ROOT / "book" / "_ext" / "stage_deps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    source = (ROOT / "book" / "multigen.md").read_text()
    assert mod.stage_notebooks(source) == ["_stages/03_multigen.ipynb"]
    (tmp_path / "_stages").mkdir()
    (tmp_path / "_stages" / "03_multigen.ipynb").write_text("{}")
    noted = []
    env = types.SimpleNamespace(doc2path=lambda d: str(tmp_path / f"{d}.md"), note_dependency=noted.append)
    mod.note_stage_dependencies(types.SimpleNamespace(env=env), "multigen", [source])
    assert noted == [str((tmp_path / "_stages" / "03_multigen.ipynb").resolve())]
    assert "stage_deps" in (ROOT / "_config.yml").read_text()
