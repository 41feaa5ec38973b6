"""The built book, opened in a real headless Chromium as a reader would, offline; and the book's extension.

The browser checks need a built book (``python -m reprolib run --profile tiny``) and Debian's ``chromium``.
CI sets ``REPROLIB_REQUIRE_BOOK=1`` (``tests/_require.py``) so that a missing book or browser fails instead of
skipping. Chromium
runs with every host name unresolvable (nothing is fetched from a network), and a screenshot of every
chapter is saved under ``build/screenshots/`` (CI's artifact).
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from _require import need

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
SHOTS = ROOT / "build" / "screenshots"
FIGURES = {"multigen.html": 1, "attention.html": 1, "editing.html": 1, "miniworld.html": 1,
           "usability.html": 1, "ledger.html": 1}            # page: min figures (pages showing numbers)
VERDICTS = ("supported", "not supported at 5 %", "contradicted", "table error", "needs the paper profile")
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")
PATH_AS_NAME = re.compile(r"/unet\b|\blocal-|\.safetensors")       # a UNet folder used as a checkpoint name


def _chapters() -> list[str]:
    """Every chapter of the book (from _toc.yml), as HTML file names, the root first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"] if "file" in c]
    return ["index.html" if f == toc["root"] else f"{f}.html" for f in files]


CHAPTERS = _chapters()


def _need(cond: bool, why: str) -> None:
    need(cond, why, "book")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    _need(exe is not None, "Debian's chromium is not installed")
    return exe


def _run(exe: str, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND",             # offline: no CDN can be reached
             "--virtual-time-budget=8000", f"--user-data-dir={ROOT / 'build' / 'chromium-profile'}"]
    r = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class _Text(HTMLParser):
    """Visible text of a page (no script/style), and the text of each table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.rows: list[list[str]] = []
        self._skip = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "mjx-assistive-mml"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style", "mjx-assistive-mml"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def pages():
    """Each chapter's DOM after its scripts ran (offline), parsed; a screenshot of each is saved."""
    _need((HTML / "index.html").is_file(), f"book not built: {HTML / 'index.html'} missing (run python -m reprolib run)")
    exe = _chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = {}
    for page in CHAPTERS:
        _need((HTML / page).is_file(), f"book not built: {HTML / page} missing")
        url = (HTML / page).as_uri()
        dom = _run(exe, "--dump-dom", url)
        parsed = _Text()
        parsed.feed(dom)
        out[page] = (dom, parsed)
        shot = SHOTS / page.replace(".html", ".png")
        _run(exe, f"--screenshot={shot}", "--window-size=1280,2400", url)
    return out


def test_every_chapter_renders_and_has_a_screenshot(pages):
    for page in CHAPTERS:
        dom, parsed = pages[page]
        assert "<main" in dom or 'id="main-content"' in dom, page
        for placeholder in ("glue_ref", "not found in doc", "[mystnb", "Pending glue"):
            assert placeholder not in dom, f"{page}: unresolved glue ({placeholder})"
        shot = SHOTS / page.replace(".html", ".png")
        assert shot.is_file() and shot.stat().st_size > 10_000, f"{page}: no screenshot"


def test_every_image_of_every_chapter_is_shipped(pages):
    """A glued figure whose file is not in the HTML build shows as a broken image (alt text only)."""
    for page, (dom, _) in pages.items():
        for src in re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom):
            if src.startswith(("data:", "http:", "https:")):
                continue
            path = (HTML / page).parent / src.split("#")[0].split("?")[0]
            if src.startswith("file://"):
                path = Path(src[len("file://"):])
            assert path.is_file(), f"{page}: broken image {src}"


@pytest.mark.parametrize("page,min_figures", sorted(FIGURES.items()))
def test_pages_with_numbers_have_tables_figures_banner_provenance(pages, page, min_figures):
    dom, _ = pages[page]
    assert dom.count("<img") >= min_figures, f"{page}: expected ≥{min_figures} figures"
    assert "<table" in dom, f"{page}: no table"
    assert "repro-banner" in dom, f"{page}: no profile banner"
    assert "repro-provenance" in dom, f"{page}: no provenance line"


def test_math_is_rendered_offline(pages):
    """Offline, math is rendered by the MathJax shipped with the book: no \\( … \\) or $$ left in the text."""
    rendered_math = 0
    for page, (dom, parsed) in pages.items():
        text = "".join(parsed.text)
        raw = RAW_MATH.search(text)
        assert raw is None, f"{page}: raw LaTeX delimiter {raw.group(0)!r} in '…{text[max(0, raw.start() - 60):raw.end() + 60]}…'"
        rendered_math += dom.count("<mjx-container")
    assert rendered_math > 0, "no page has rendered math (the offline MathJax did not run)"


@pytest.mark.parametrize("page", CHAPTERS)
def test_no_table_shows_nan_or_a_path_as_a_checkpoint_name(pages, page):
    for row in pages[page][1].rows:
        for cell in row:
            assert not re.search(r"\bNaN\b|\bnan\b", cell), f"{page}: NaN in a table cell {row}"
            assert not PATH_AS_NAME.search(cell), f"{page}: a file path in a table cell: {cell!r}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_every_table_goes_through_the_table_helper(pages, page):
    """A raw pandas table (class "dataframe") shows its index column and internal names: every glued
    table of a chapter must be a reprolib.tables one (great-tables, class "gt_table")."""
    dom = pages[page][0]
    assert 'class="dataframe"' not in dom, f"{page}: a raw pandas DataFrame is glued; use reprolib.tables"


def test_multigen_page_shows_the_reported_table_1(pages):
    text = "".join(pages["multigen.html"][1].text)
    assert "73.47 ± 1.40" in text, "the report's retrained COCO MG3"
    assert "76.16 ± 1.04" in text, "the paper's COCO MG3"
    assert "COCO" in text and "ADE20K" in text


def test_editing_page_shows_the_reported_table_2(pages):
    text = "".join(pages["editing.html"][1].text)
    assert "26.02" in text and "18.55" in text


def test_ledger_has_at_least_twelve_claims_each_with_a_verdict(pages):
    _, parsed = pages["ledger.html"]
    header = next(r for r in parsed.rows if "Verdict" in r and "Claim (our words)" in r)
    i = header.index("Verdict")
    body = [r for r in parsed.rows if len(r) == len(header) and r is not header and r[i] != "Verdict"]
    claims = [r for r in body if r[i] in VERDICTS]
    assert len(claims) >= 12 and len(claims) == len(body), [r[i] for r in body]


# --------------------------------------------------------------------------- the extension (no browser)

def _extension():
    import importlib.util
    spec = importlib.util.spec_from_file_location("stage_deps", ROOT / "book" / "_ext" / "stage_deps.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pages_depend_on_the_stage_notebooks_they_glue_from_even_before_they_exist(tmp_path):
    """A missing stage notebook is a dependency too: Sphinx re-reads the page until it appears."""
    import types
    mod = _extension()
    source = (ROOT / "book" / "multigen.md").read_text()
    assert mod.stage_notebooks(source) == ["_stages/03_multigen.ipynb", "_stages/07_report.ipynb"]
    noted = []
    env = types.SimpleNamespace(doc2path=lambda d: str(tmp_path / f"{d}.md"), note_dependency=noted.append)
    mod.note_stage_dependencies(types.SimpleNamespace(env=env), "multigen", [source])
    assert noted == [str((tmp_path / "_stages" / n).resolve()) for n in ("03_multigen.ipynb", "07_report.ipynb")]
    config = (ROOT / "_config.yml").read_text()
    assert "stage_deps" in config and "sphinx-mathjax-offline" in config


def test_incremental_build_rereads_a_page_when_its_stage_notebook_appears_or_changes(tmp_path):
    """A real (tiny) Sphinx project using the extension's dependency hook: built before the notebook
    exists, the page is re-read at every build until it appears, once when it appears, again when it
    changes, and not when nothing changed."""
    import time

    from sphinx.application import Sphinx
    src = tmp_path / "src"
    (src / "_stages").mkdir(parents=True)
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "from stage_deps import note_stage_dependencies\n"
        "READ = []\n"
        "def setup(app):\n"
        "    app.connect('source-read', note_stage_dependencies)\n"
        f"    app.connect('source-read', lambda app, doc, src: open({str(tmp_path / 'read.txt')!r}, 'a').write(doc + '\\n'))\n"
        "exclude_patterns = ['_stages']\n")
    (src / "index.rst").write_text("Home\n====\n\n.. toctree::\n\n   page\n")
    (src / "page.rst").write_text("Page\n====\n\nNumbers glued from _stages/03_multigen.ipynb.\n")
    nb = src / "_stages" / "03_multigen.ipynb"

    def build() -> list[str]:
        log = tmp_path / "read.txt"
        log.write_text("")
        Sphinx(str(src), str(src), str(tmp_path / "out"), str(tmp_path / "doctrees"), "html",
               status=io.StringIO(), warning=io.StringIO()).build()
        return log.read_text().split()

    assert "page" in build()                      # first build
    assert "page" in build()                      # the notebook is still missing: re-read again
    time.sleep(0.05)
    nb.write_text("{}")
    assert "page" in build()                      # it appeared
    assert build() == []                          # nothing changed
    time.sleep(0.05)
    nb.write_text('{"cells": []}')
    os.utime(nb, None)
    assert build() == ["page"]                    # it changed


def test_book_build_stops_with_one_line_when_stages_are_missing(tmp_path, monkeypatch):
    """``jupyter-book build book`` with missing stages and REPROLIB_BOOK_STAGES=check: one line naming the
    command, no page is written (the extension's builder-inited hook, called as Sphinx calls it)."""
    import types
    mod = _extension()
    runner = mod._reprolib_runner()
    monkeypatch.setenv(runner.BOOK_STAGES_ENV, "check")
    app = types.SimpleNamespace(srcdir=str(tmp_path), config=types.SimpleNamespace(reprolib_book_stages="auto"))
    (tmp_path / "_stages").mkdir()
    with pytest.raises(SystemExit) as e:
        mod.ensure_stages(app)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("error: the book needs stage notebooks that are missing")
    assert "03_multigen (missing)" in msg and "`python -m reprolib run --profile tiny`" in msg
