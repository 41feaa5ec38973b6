"""Reported numbers, with their sources: the report's Tables 1 and 2, the authors' README, the PIE-Bench paper.

Every value here is *quoted*, never computed: it lives in ``data/`` with a ``source`` column and is
shown in the book as "reported". Three sources:

* the independent reproducibility report (L. Martinez, Télécom Paris, 2025-01-13; BibTeX key
  ``martinez2025report``): ``data/report/table1_multigen.csv`` (Table 1, MultiGen) and
  ``data/report/table2_piebench.csv`` (Table 2, PIE-Bench), exactly as printed;
* the TokenCompose authors' README (the paper's MultiGen table): ``data/multigen/reported.csv``;
* the PIE-Bench paper's Direct Inversion + P2P row: ``data/editing/table2_reported.csv``.

This module loads them (one-line errors naming the file and the missing column), gives each row a
stable key and a display name, and lays them out as the book's publication tables (see
:mod:`reprolib.tables`). The statistics on them are :mod:`reprolib.reanalysis`; the claims they
support or not are :mod:`reprolib.claims`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .io import REPO_ROOT, repo_path

DATA = REPO_ROOT / "data"
REPORT_TABLE1 = DATA / "report" / "table1_multigen.csv"
REPORT_TABLE2 = DATA / "report" / "table2_piebench.csv"
AUTHORS_TABLE1 = DATA / "multigen" / "reported.csv"
PIEBENCH_PAPER = DATA / "editing" / "table2_reported.csv"
REPORT_BIBKEY = "martinez2025report"
REPORT_SHORT = "Martinez (2025)"
AUTHORS_SHORT = "Wang et al. (2024), authors' README"
PIEBENCH_SHORT = "Ju et al. (2024), PIE-Bench paper"

#: The report's Table 1 rows → stable keys used by the re-analysis and the claims.
REPORT_ROWS = {"TokenCompose (paper)": "paper", "TokenCompose (checkpoint A)": "A",
               "TokenCompose (checkpoint B)": "B", "Attend-and-Excite": "attend_and_excite",
               "TokenCompose (retrained)": "retrained"}
#: Display names of the report's rows (its own wording: "Original" is the paper's numbers).
REPORT_NAMES = {"paper": "TokenCompose (paper's numbers)", "A": "TokenCompose (checkpoint A)",
                "B": "TokenCompose (checkpoint B)", "attend_and_excite": "Attend-and-Excite",
                "retrained": "TokenCompose (retrained)"}
#: The authors' README methods → display names.
AUTHORS_NAMES = {"SD 1.4": "SD1.4", "Composable": "Composable Diffusion", "Layout": "Layout Guidance",
                 "Structured": "Structured Diffusion", "Attn-Exct": "Attend-and-Excite",
                 "TokenCompose": "TokenCompose"}
PROMPT_SETS = {"coco": "COCO", "ade20k": "ADE20K"}
KS = (2, 3, 4, 5)

#: The report's Table 2 columns → the metric keys of :mod:`reprolib.metrics` / ``editing.TABLE2_METRICS``.
TABLE2_COLUMNS = {"structure_distance_e3": "structure_distance", "psnr_bg": "psnr_unedit_part",
                  "lpips_bg_e3": "lpips_unedit_part", "mse_bg_e4": "mse_unedit_part",
                  "ssim_bg_e2": "ssim_unedit_part", "clip_whole": "clip_similarity_target_image",
                  "clip_edited": "clip_similarity_target_image_edit_part"}
#: Table 2 metrics: (group, header with unit and direction, higher is better).
TABLE2_HEADERS = {
    "structure_distance": ("Structure", "Distance ×10³ ↓", False),
    "psnr_unedit_part": ("Background preservation", "PSNR (dB) ↑", True),
    "lpips_unedit_part": ("Background preservation", "LPIPS ×10³ ↓", False),
    "mse_unedit_part": ("Background preservation", "MSE ×10⁴ ↓", False),
    "ssim_unedit_part": ("Background preservation", "SSIM ×10² ↑", True),
    "clip_similarity_target_image": ("CLIP similarity", "Whole ↑", True),
    "clip_similarity_target_image_edit_part": ("CLIP similarity", "Edited ↑", True),
}
#: Short metric names for sentences.
TABLE2_SHORT = {"structure_distance": "structure distance", "psnr_unedit_part": "PSNR",
                "lpips_unedit_part": "LPIPS", "mse_unedit_part": "MSE", "ssim_unedit_part": "SSIM",
                "clip_similarity_target_image": "CLIP whole", "clip_similarity_target_image_edit_part": "CLIP edited"}
#: The report's Table 2 rows → stable keys.
REPORT_TABLE2_ROWS = {"Direct Inversion + P2P": "direct_inversion_p2p",
                      "Blended Latent Diffusion (SD1.4)": "bld_sd14",
                      "Blended Latent Diffusion (TokenCompose)": "bld_tokencompose"}
REPORT_TABLE2_NAMES = {"direct_inversion_p2p": "Direct Inversion + P2P (as quoted)",
                       "bld_sd14": "BLD + SD1.4", "bld_tokencompose": "BLD + TokenCompose"}


class ReportedDataError(ValueError):
    """A reported-data file that is missing, lacks a column or a source; the message names it."""


def _read(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    path = repo_path(path)
    if not path.is_file():
        raise ReportedDataError(f"reported data not found: {path}")
    df = pd.read_csv(path, comment="#")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportedDataError(f"{path}: missing column {missing[0]!r}")
    if "source" in columns and (df["source"].isna() | (df["source"].astype(str).str.strip() == "")).any():
        raise ReportedDataError(f"{path}: every row needs a source")
    return df


def _keyed(df: pd.DataFrame, rows: Mapping[str, str], path: str | Path) -> pd.DataFrame:
    """Add the stable ``key`` of each row; an unknown method is a one-line error naming the file."""
    unknown = sorted(set(df["method"]) - set(rows))
    if unknown:
        raise ReportedDataError(f"{path}: unknown method {unknown[0]!r}; expected one of {sorted(rows)}")
    df.insert(0, "key", df["method"].map(rows))
    return df


def load_report_table1(path: str | Path = REPORT_TABLE1) -> pd.DataFrame:
    """The report's Table 1, long: ``key, method, prompt_set, k, mean, std, source`` (std as printed: ddof = 0)."""
    return _keyed(_read(path, ("method", "prompt_set", "k", "mean", "std", "source")), REPORT_ROWS, path)


def load_authors_table1(path: str | Path = AUTHORS_TABLE1) -> pd.DataFrame:
    """The authors' README MultiGen table, long: ``key, method, prompt_set, k, mean, std, source``."""
    df = _read(path, ("method", "prompt_set", "k", "mean", "std", "source"))
    df.insert(0, "key", df["method"])
    return df


def load_report_table2(path: str | Path = REPORT_TABLE2) -> pd.DataFrame:
    """The report's Table 2 with metric keys as columns: ``key, method, <metrics>, source``."""
    df = _read(path, ("method", *TABLE2_COLUMNS, "source")).rename(columns=TABLE2_COLUMNS)
    return _keyed(df, REPORT_TABLE2_ROWS, path)


def load_piebench_paper(path: str | Path = PIEBENCH_PAPER) -> pd.DataFrame:
    """The PIE-Bench paper's rows: ``method, <metrics>, source, checked_via, via_report``.

    ``via_report`` lists the metrics known here only as the report quotes them (not independently checked).
    """
    df = _read(path, ("method", *TABLE2_HEADERS, "source"))
    if "via_report" not in df.columns:
        df["via_report"] = ""
    df["via_report"] = df["via_report"].fillna("").astype(str)
    return df


def load_multigen_reported(report: pd.DataFrame | None = None, authors: pd.DataFrame | None = None) -> pd.DataFrame:
    """Both MultiGen sources in one long table: ``study`` ("report" / "authors"), key, name (display),
    prompt_set, k, mean, std, source."""
    report = load_report_table1() if report is None else report
    authors = load_authors_table1() if authors is None else authors
    r = report.assign(study="report", name=report["key"].map(REPORT_NAMES))
    a = authors.assign(study="authors", name=authors["key"].map(lambda k: AUTHORS_NAMES.get(k, k)))
    cols = ["study", "key", "name", "prompt_set", "k", "mean", "std", "source"]
    return pd.concat([r[cols], a[cols]], ignore_index=True)


def value(df: pd.DataFrame, key: str, prompt_set: str, k: int, column: str = "mean") -> float:
    """One cell of a long MultiGen table; raises naming the row when it is absent."""
    r = df[(df["key"] == key) & (df["prompt_set"] == prompt_set) & (df["k"] == int(k))]
    if r.empty:
        raise ReportedDataError(f"no reported value for {key!r} at {prompt_set} MG{k}")
    return float(r[column].iloc[0])


# --------------------------------------------------------------------------- publication tables

def _mg_cells(df: pd.DataFrame, names: Mapping[str, str], group: str, ks: Sequence[int] = KS,
              prompt_sets: Sequence[str] = tuple(PROMPT_SETS)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of one group: display strings "mean ± std" and the numeric means (for bold)."""
    from .tables import mean_std
    cols = pd.MultiIndex.from_tuples([(PROMPT_SETS.get(ps, ps), f"MG{k} (%)") for ps in prompt_sets for k in ks])
    cells, means = [], []
    for key in dict.fromkeys(df["key"]):
        d = df[df["key"] == key]
        row, mrow = [], []
        for ps in prompt_sets:
            for k in ks:
                r = d[(d["prompt_set"] == ps) & (d["k"] == k)]
                row.append(mean_std(r["mean"].iloc[0], r["std"].iloc[0]) if len(r) else None)
                mrow.append(float(r["mean"].iloc[0]) if len(r) else float("nan"))
        cells.append([group, names.get(key, key), *row])
        means.append([group, names.get(key, key), *mrow])
    head = pd.MultiIndex.from_tuples([("", "group"), ("", "Method")])
    columns = head.append(cols)
    return pd.DataFrame(cells, columns=columns), pd.DataFrame(means, columns=columns)


def table1_frames(report: pd.DataFrame | None = None, authors: pd.DataFrame | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 of the book (reported values only): the authors' rows, then the report's rows.

    Returns the display frame ("mean ± std" strings, group and method columns, COCO/ADE20K spanners)
    and the numeric means of the same shape (for :func:`reprolib.tables.best_mask`).
    """
    report = load_report_table1() if report is None else report
    authors = load_authors_table1() if authors is None else authors
    a_cells, a_means = _mg_cells(authors, AUTHORS_NAMES, f"Paper: {AUTHORS_SHORT}")
    r_cells, r_means = _mg_cells(report, REPORT_NAMES, f"Reproducibility report: {REPORT_SHORT}, Table 1")
    return pd.concat([a_cells, r_cells], ignore_index=True), pd.concat([a_means, r_means], ignore_index=True)


def table1(report: pd.DataFrame | None = None, authors: pd.DataFrame | None = None):
    """The publication-style reported Table 1 (a great-tables ``GT``), best per column and group in bold."""
    from .tables import best_mask, table
    cells, means = table1_frames(report, authors)
    value_cols = [c for c in cells.columns if c[0] != ""]
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    bold[value_cols] = best_mask(means[value_cols], True, groups=means[("", "group")].tolist()).to_numpy()
    return table(cells, stub="|Method", group="|group", bold=bold, stubhead="Method",
                 title="Table 1 — MultiGen, reported values",
                 subtitle="MG-k: % of images in which at least k of the 5 prompted categories are found; "
                          "mean ± std over the 10 image indices (np.std, ddof = 0). Best per column and "
                          "source in bold.",
                 notes=["Reported: quoted from data/multigen/reported.csv (the TokenCompose authors' README) and "
                        "data/report/table1_multigen.csv (the reproducibility report, as printed), never computed here."])


def table2_frames(report: pd.DataFrame | None = None, paper: pd.DataFrame | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 of the book (reported values only): the PIE-Bench paper's row, then the report's rows."""
    from .tables import mean_std
    report = load_report_table2() if report is None else report
    paper = load_piebench_paper() if paper is None else paper
    metrics = list(TABLE2_HEADERS)
    columns = pd.MultiIndex.from_tuples([("", "group"), ("", "Method")]
                                        + [TABLE2_HEADERS[m][:2] for m in metrics])
    rows, nums = [], []
    for _, r in paper.iterrows():
        g = f"{PIEBENCH_SHORT}, Table 1"
        rows.append([g, f"{r['method']}", *[mean_std(r[m]) for m in metrics]])
        nums.append([g, r["method"], *[r[m] for m in metrics]])
    for _, r in report.iterrows():
        g = f"Reproducibility report: {REPORT_SHORT}, Table 2"
        name = REPORT_TABLE2_NAMES[r["key"]]
        rows.append([g, name, *[mean_std(r[m]) for m in metrics]])
        nums.append([g, name, *[r[m] for m in metrics]])
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(nums, columns=columns)


def _table2_gt(cells: pd.DataFrame, nums: pd.DataFrame, **kwargs):
    """Table 2's layout as a book table: metric spanners, best per column (and row group) in bold."""
    from .tables import best_mask, table
    value_cols = [c for c in cells.columns if c[0] != ""]
    hib = {c: TABLE2_HEADERS[m][2] for c, m in zip(value_cols, TABLE2_HEADERS)}
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    groups = nums[("", "group")].tolist() if ("", "group") in nums.columns else None
    bold[value_cols] = best_mask(nums[value_cols], hib, groups=groups).to_numpy()
    group = "|group" if groups is not None else None
    return table(cells, stub="|Method", group=group, bold=bold, stubhead="Method", **kwargs)


def table2(report: pd.DataFrame | None = None, paper: pd.DataFrame | None = None):
    """The publication-style reported Table 2 (``GT``): best per column and source in bold (direction-aware)."""
    cells, nums = table2_frames(report, paper)
    return _table2_gt(cells, nums, title="Table 2 — PIE-Bench, reported values",
                      subtitle="Means over the benchmark's images as printed (no std was reported). Units as in the "
                               "papers; ↑/↓: higher/lower is better. Best per column and source in bold.",
                      notes=["Reported: quoted from data/editing/table2_reported.csv (PIE-Bench paper; MSE, SSIM and "
                             "edited-region CLIP as the report quotes them) and data/report/table2_piebench.csv (the "
                             "reproducibility report, as printed). The report prints 18.02 for Direct Inversion + "
                             "P2P's whole-image CLIP similarity; the PIE-Bench paper gives 25.02."])


def table2_measured(scores: pd.DataFrame, labels: Mapping[str, str], title: str, notes: Sequence[str] = ()):
    """Our Table 2, in the reported table's layout: per checkpoint, "mean ± std" over images in the papers'
    units (``scores``: per-image PIE-Bench metrics with a ``checkpoint`` column, raw units). Non-finite
    values (an infinite PSNR where the background is untouched) are left out of both statistics."""
    from .metrics import PAPER_UNITS
    from .tables import mean_std
    metrics = list(TABLE2_HEADERS)
    columns = pd.MultiIndex.from_tuples([("", "Method")] + [TABLE2_HEADERS[m][:2] for m in metrics]
                                        + [("", "images")])
    rows, nums = [], []
    for ckpt, g in scores.groupby("checkpoint", sort=False):
        name = labels.get(ckpt, ckpt)
        stats = []
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce") * PAPER_UNITS[m][1] if m in g.columns else pd.Series(dtype=float)
            v = v[np.isfinite(v)]
            stats.append((v.mean(), v.std(ddof=1)) if len(v) else (np.nan, np.nan))
        rows.append([name, *[mean_std(mu, sd) for mu, sd in stats], len(g)])
        nums.append([name, *[mu for mu, _ in stats], len(g)])
    cells, nums = pd.DataFrame(rows, columns=columns), pd.DataFrame(nums, columns=columns)
    return _table2_gt(cells, nums, title=title,
                      subtitle="Mean ± std over the edited images, in the papers' units; ↑/↓: higher/lower is better. "
                               "Best per column in bold.", notes=notes)


#: Our editing checkpoints → the report's Table 2 row they reproduce (the report does not say which
#: TokenCompose checkpoint it plugged into BLD; the authors' checkpoint A is the one it calls the reference).
TABLE2_COUNTERPARTS = {"sd14": "bld_sd14", "tokencompose_a": "bld_tokencompose"}


def table2_verdicts(scores: pd.DataFrame, report: pd.DataFrame | None = None, level: float = 0.95) -> pd.DataFrame:
    """Per Table 2 cell, for each of our checkpoints with a counterpart in the report: our mean over images
    with its t interval (papers' units), the reported value, and "consistent" / "ours higher" / "ours lower"
    (is the reported value inside our interval?). The interval covers the sampling of images only."""
    from scipy import stats

    from .metrics import PAPER_UNITS
    report = load_report_table2() if report is None else report
    rows = []
    for ckpt, g in scores.groupby("checkpoint", sort=False):
        key = TABLE2_COUNTERPARTS.get(str(ckpt))
        if key is None:
            continue
        rep = report[report["key"] == key].iloc[0]
        for m in TABLE2_HEADERS:
            v = pd.to_numeric(g.get(m), errors="coerce") * PAPER_UNITS[m][1]
            v = v[np.isfinite(v)]
            if len(v) < 2:
                continue
            mean, se = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
            h = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * se)
            r = float(rep[m])
            verdict = "consistent" if mean - h <= r <= mean + h else "ours higher" if mean - h > r else "ours lower"
            rows.append(dict(checkpoint=ckpt, reported_as=REPORT_TABLE2_NAMES[key], metric=m, ours=mean,
                             lo=mean - h, hi=mean + h, reported=r, verdict=verdict, n=len(v)))
    return pd.DataFrame(rows, columns=["checkpoint", "reported_as", "metric", "ours", "lo", "hi", "reported",
                                       "verdict", "n"])


def table2_side_by_side(verdicts: pd.DataFrame, labels: Mapping[str, str], profile_name: str):
    """Our Table 2 cells beside the report's with the per-cell verdict (one row group per checkpoint)."""
    from .tables import mean_ci, mean_std, table
    metrics = list(TABLE2_HEADERS)
    header = pd.MultiIndex.from_tuples([("", "group"), ("", "row")] + [TABLE2_HEADERS[m][:2] for m in metrics])
    rows = []
    for ckpt, g in verdicts.groupby("checkpoint", sort=False):
        cell = {r.metric: r for r in g.itertuples()}
        get = [cell.get(m) for m in metrics]
        group = labels.get(ckpt, ckpt)
        rows.append([group, f"ours ({profile_name} profile), mean [95 % CI]",
                     *[mean_ci(r.ours, r.lo, r.hi) if r else None for r in get]])
        rows.append([group, f"reported: {g['reported_as'].iloc[0]}", *[mean_std(r.reported) if r else None for r in get]])
        rows.append([group, "verdict", *[r.verdict if r else None for r in get]])
    return table(pd.DataFrame(rows, columns=header), stub="|row", group="|group", stubhead="",
                 title=f"Ours ({profile_name} profile) beside the report's Table 2",
                 subtitle="Verdict: is the reported value inside our 95 % t interval over the edited images?")
