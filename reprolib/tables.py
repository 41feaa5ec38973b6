"""The one table helper of the book: every glued table is a great-tables ``GT`` built here.

Why great-tables rather than pandas' Styler: the book's tables are publication tables — Table 1 needs
column spanners (COCO / ADE20K over MG2–MG5) *and* row groups (the authors' rows, the report's rows)
with no index column, a stub head, source notes and per-cell bold. Styler can hide the index or show
row groups, not both; great-tables has all of them as first-class parts and renders to one
self-contained HTML fragment with scoped CSS, which is what ``myst_nb.glue`` pastes into a page.

Conventions (the brief's "what a reader sees"), applied by :func:`table` to any DataFrame:

* no index column: a named index becomes an ordinary first column, a RangeIndex is dropped;
* two-level column labels become spanners (level 0) over columns (level 1);
* missing values print as "–"; floats with a fixed number of decimals;
* "mean ± std" and "mean [lo, hi]" cells come from :func:`mean_std` and :func:`mean_ci`;
* the best value per column can be set in bold (:func:`best_mask`);
* checkpoints are shown by :func:`display_name`, never by their file path.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:                                  # pragma: no cover
    from great_tables import GT

    from .config import Profile

MISSING = "–"
SEP = "|"                                          # joins the two levels of a spanned column id
FONT_SIZE = "13px"                                 # wide tables fit the 1280 px page at this size

#: Display names of the checkpoint aliases (``reprolib.models.CHECKPOINTS`` and the Attend-and-Excite baseline).
CHECKPOINT_NAMES = {
    "sd14": "SD1.4",
    "tokencompose_a": "TokenCompose (checkpoint A)",
    "tokencompose_b": "TokenCompose (checkpoint B)",
    "attend_and_excite": "Attend-and-Excite",
    "CompVis/stable-diffusion-v1-4": "SD1.4",
    "mlpc-lab/TokenCompose_SD14_A": "TokenCompose (checkpoint A)",
    "mlpc-lab/TokenCompose_SD14_B": "TokenCompose (checkpoint B)",
}
#: Display names of the pretrained model's own UNet (alias ``base``), by ``model.pretrained``.
BASE_NAMES = {"miniworld": "World base (not fine-tuned)", "tiny": "Random tiny base",
              "CompVis/stable-diffusion-v1-4": "SD1.4"}
RETRAINED = "TokenCompose, retrained here (stage 02)"
WORLD_RETRAINED = "World base + TokenCompose fine-tune (stage 02)"
TINY_RETRAINED = "Random tiny base + TokenCompose fine-tune (stage 02)"


# --------------------------------------------------------------------------- names and cells

def display_name(checkpoint: str, profile: "Profile | None" = None) -> str:
    """What a reader sees for a checkpoint: ``sd14`` → "SD1.4", stage 02's folder → "…retrained here".

    A local folder is never shown as its path: stage 02's export of `profile` is named as such, any
    other folder by its last component only.
    """
    name = str(checkpoint)
    if name == "base":
        pretrained = profile.model.pretrained if profile is not None else ""
        return BASE_NAMES.get(pretrained, "Base model")
    if name in CHECKPOINT_NAMES:
        return CHECKPOINT_NAMES[name]
    if profile is not None:
        trained = Path(profile.train.output_dir) / "unet"
        if _same_path(name, trained):
            return WORLD_RETRAINED if profile.is_world else TINY_RETRAINED if profile.is_tiny else RETRAINED
    from .io import repo_path
    p = repo_path(name)
    if p.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:   # a folder, not a hub id
        return f"local checkpoint “{p.parent.name if p.name == 'unet' else p.name}”"
    return name


def _same_path(a: str, b: Path) -> bool:
    from .io import repo_path
    try:
        return repo_path(a).resolve() == repo_path(str(b)).resolve()
    except OSError:
        return False


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _num(x: Any, decimals: int) -> str:
    """A fixed-decimals number that never prints as "-0.00"."""
    v = float(x)
    return f"{0.0 if round(v, decimals) == 0 else v:.{decimals}f}"


def mean_std(mean: Any, std: Any = None, decimals: int = 2) -> str:
    """``"76.16 ± 1.04"``; ``"76.16"`` without a std; "–" when the mean is missing."""
    if not _finite(mean):
        return MISSING
    if not _finite(std):
        return _num(mean, decimals)
    return f"{_num(mean, decimals)} ± {_num(std, decimals)}"


def mean_ci(mean: Any, lo: Any, hi: Any, decimals: int = 2) -> str:
    """``"73.47 [70.10, 76.00]"``; the mean alone when the interval is missing; "–" without a mean."""
    if not _finite(mean):
        return MISSING
    if not (_finite(lo) and _finite(hi)):
        return _num(mean, decimals)
    return f"{_num(mean, decimals)} [{_num(lo, decimals)}, {_num(hi, decimals)}]"


def p_value(p: Any) -> str:
    """p-values as a reader scans them: 3 significant digits, "< 0.0001" below that, "–" when missing."""
    if not _finite(p):
        return MISSING
    p = float(p)
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def best_mask(values: pd.DataFrame, higher_is_better: bool | Mapping[str, bool] = True,
              groups: Sequence[Any] | None = None, tol: float = 1e-9) -> pd.DataFrame:
    """True where a cell is the best of its column (within its row group when ``groups`` is given).

    Ties are all marked; NaN is never best; a column whose values are all equal marks nothing.
    ``higher_is_better`` may be per column (e.g. LPIPS: lower is better).
    """
    out = pd.DataFrame(False, index=values.index, columns=values.columns)
    keys = pd.Series(list(groups) if groups is not None else [0] * len(values), index=values.index)
    for col in values.columns:
        hib = higher_is_better.get(col, True) if isinstance(higher_is_better, Mapping) else higher_is_better
        for _, idx in keys.groupby(keys, sort=False).groups.items():
            v = pd.to_numeric(values.loc[idx, col], errors="coerce")
            v = v[np.isfinite(v)]
            if len(v) < 2 or v.max() - v.min() <= tol:
                continue
            best = v.max() if hib else v.min()
            out.loc[v.index[(v - best).abs() <= tol], col] = True
    return out


# --------------------------------------------------------------------------- rendering

def _flat_columns(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, str]]:
    """Two-level columns → flat ids ``"top|sub"``, the spanners ``{top: [ids]}`` and labels ``{id: sub}``."""
    if not isinstance(df.columns, pd.MultiIndex):
        return df, {}, {}
    if df.columns.nlevels != 2:
        raise ValueError(f"table: at most two column levels, got {df.columns.nlevels}")
    ids = [f"{a}{SEP}{b}" for a, b in df.columns]
    spanners: dict[str, list[str]] = {}
    for (a, _), i in zip(df.columns, ids):
        spanners.setdefault(str(a), []).append(i)
    labels = {i: str(b) for (_, b), i in zip(df.columns, ids)}
    out = df.copy()
    out.columns = ids
    return out, spanners, labels


def _drop_index(df: pd.DataFrame) -> pd.DataFrame:
    """No index column: row numbers (an unnamed integer index) are dropped; a named index, or unnamed
    text labels (e.g. loss names), become an ordinary first column."""
    if all(n is None for n in df.index.names):
        if df.index.nlevels == 1 and pd.api.types.is_integer_dtype(df.index):
            return df.reset_index(drop=True)
        name = ("", "") if isinstance(df.columns, pd.MultiIndex) else ""
        return df.reset_index(names=[name] if df.index.nlevels == 1 else None)
    return df.reset_index()


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text) or "table"


def table(df: pd.DataFrame, *, stub: str | None = None, group: str | None = None, title: str | None = None,
          subtitle: str | None = None, notes: Iterable[str] = (), bold: pd.DataFrame | None = None,
          decimals: int | Mapping[str, int] = 2, labels: Mapping[str, str] | None = None,
          stubhead: str | None = None, table_id: str | None = None, font_size: str = FONT_SIZE,
          wrap: Mapping[str, float] | None = None, fills: Mapping[str, Mapping[str, str]] | None = None) -> "GT":
    """Any DataFrame as a book table (see the module docstring for what is applied).

    ``stub``: the column of row names (shown as the first, header-less-index column); ``group``: the
    column whose values become row-group headings; ``bold``: a boolean frame, same rows and columns as
    ``df`` (after the index is dropped), of cells to set in bold; ``decimals``: for float columns, one
    value or per column; ``labels``: column display labels; ``notes``: source notes under the table;
    ``wrap``: text columns that wrap, with their minimum width in em (other cells stay on one line);
    ``fills``: ``{column: {cell value: background colour}}`` (e.g. a verdict column).
    """
    from great_tables import GT, loc, style

    df = _drop_index(df)
    bold = None if bold is None else _drop_index(bold)
    flat, spanners, span_labels = _flat_columns(df)
    flat = flat.reset_index(drop=True)
    flat.columns = [str(c) for c in flat.columns]
    # Object columns keep their text; NaN/None become "–" through sub_missing.
    gt = GT(flat, rowname_col=stub, groupname_col=group, id=_safe_id(table_id) if table_id else None)
    if title or subtitle:
        gt = gt.tab_header(title=title or "", subtitle=subtitle)
    for top, cols in spanners.items():
        if top.strip():
            gt = gt.tab_spanner(label=top, columns=cols)
    all_labels = {**span_labels, **{str(k): v for k, v in (labels or {}).items()}}
    if all_labels:
        gt = gt.cols_label(**{k: v for k, v in all_labels.items() if k in flat.columns})
    if stubhead is not None and stub is not None:
        gt = gt.tab_stubhead(label=stubhead)
    for col in flat.columns:
        if col in (stub, group):
            continue
        if pd.api.types.is_float_dtype(flat[col]):
            d = decimals.get(col, 2) if isinstance(decimals, Mapping) else decimals
            gt = gt.fmt_number(columns=col, decimals=d, use_seps=False)
        elif pd.api.types.is_integer_dtype(flat[col]):
            gt = gt.fmt_integer(columns=col, use_seps=False)
    if bold is not None:
        b, _, _ = _flat_columns(bold)
        b = b.reset_index(drop=True)
        b.columns = [str(c) for c in b.columns]
        for col in b.columns:
            rows = [int(i) for i in np.flatnonzero(b[col].fillna(False).to_numpy(dtype=bool))]
            if rows and col in flat.columns:
                gt = gt.tab_style(style=style.text(weight="bold"), locations=loc.body(columns=col, rows=rows))
    for col, em in (wrap or {}).items():
        if col in flat.columns:
            gt = gt.tab_style(style=style.css(f"white-space: normal; min-width: {em}em"),
                              locations=loc.body(columns=col))
    for col, colours in (fills or {}).items():
        for val, colour in colours.items():
            rows = [int(i) for i in np.flatnonzero((flat[col] == val).to_numpy())] if col in flat.columns else []
            if rows:
                gt = gt.tab_style(style=style.fill(color=colour), locations=loc.body(columns=col, rows=rows))
    for note in notes:
        gt = gt.tab_source_note(note)
    return (gt.sub_missing(missing_text=MISSING)
            .tab_options(table_font_size=font_size, data_row_padding="3px", column_labels_font_weight="bold",
                         row_group_font_weight="bold", source_notes_font_size="12px", table_margin_left="0",
                         heading_align="left"))


def html(gt: "GT"):
    """The table as an IPython ``HTML`` object (what glue stores as ``text/html``)."""
    from IPython.display import HTML
    return HTML(gt.as_raw_html())


def glue_table(name: str, df_or_gt: "pd.DataFrame | GT", display: bool = True, **kwargs: Any) -> None:
    """Glue a table under ``name`` (a DataFrame goes through :func:`table` with ``kwargs``).

    The executed notebook shows it too when ``display`` (so the stage notebook reads like the book).
    """
    from IPython.display import display as show
    from myst_nb import glue
    gt = table(df_or_gt, table_id=name, **kwargs) if isinstance(df_or_gt, pd.DataFrame) else df_or_gt
    obj = html(gt)
    if display:
        show(obj)
    glue(name, obj, display=False)


def glue_note(name: str, text: str, display: bool = True) -> None:
    """Glue a short paragraph (HTML-escaped) where a table would stand, e.g. "needs the paper profile"."""
    import html as _html

    from IPython.display import HTML
    from IPython.display import display as show
    from myst_nb import glue
    obj = HTML(f'<p class="repro-note">{_html.escape(text)}</p>')
    if display:
        show(obj)
    glue(name, obj, display=False)
